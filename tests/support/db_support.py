"""Made-up results and audit rows for the results-database tests (fixtures: db_fixtures.py)."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text

from worker.db.store import AuditRecord, ResultRecord

# The database tests' server: a test marked ``postgres`` (ENGINES' "postgres" case, and those
# marked so by hand) fails, never skips, when it does not answer (the skip policy:
# tests/conftest.py, which calls require_postgres before each such test).
POSTGRES_ENV = "XRAY_SCREEN_TEST_POSTGRES_URL"
POSTGRES_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
POSTGRES_URL = os.environ.get(POSTGRES_ENV) or POSTGRES_DEFAULT
MODEL_A = hashlib.sha256(b"model A").hexdigest()
MODEL_B = hashlib.sha256(b"model B").hexdigest()

ENGINES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]

_postgres_error: list[str] = []  # the probe's answer, once per session: [] not yet probed


def require_postgres() -> None:
    """Fail the test (never skip it) when PostgreSQL does not answer at POSTGRES_URL."""
    if not _postgres_error:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            _postgres_error.append("")
        except Exception as exc:
            _postgres_error.append(str(exc).strip().splitlines()[0])
        finally:
            engine.dispose()
    if _postgres_error[0]:
        where = make_url(POSTGRES_URL).render_as_string(hide_password=True)
        pytest.fail(
            f"PostgreSQL does not answer at {where} ({_postgres_error[0]}): scripts/test "
            f"installs and starts it; or set {POSTGRES_ENV}, or deselect with -m 'not postgres'",
            pytrace=False,
        )


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def result(content: str, *, model: str = MODEL_A, positive: bool = False, **fields: Any) -> ResultRecord:
    """A made-up result for the content named ``content``."""
    finished = fields.pop("finished_at", datetime.now(UTC))
    p = fields.pop("positive_probability", 0.91 if positive else 0.12)
    values: dict[str, Any] = {
        "content_sha256": sha(content),
        "label": "PNEUMONIA" if positive else "NORMAL",
        "positive_class": "PNEUMONIA",
        "positive_probability": p,
        "probabilities": {"NORMAL": 1 - p, "PNEUMONIA": p},
        "threshold": 0.5,
        "model_name": "pneumonia-resnet18",
        "model_version": "A" if model == MODEL_A else "B",
        "model_sha256": model,
        "preprocessing": "decode-v1;L;resize-squish-224x224",
        "device": "cpu",
        "queued_at": finished - timedelta(seconds=3),
        "started_at": finished - timedelta(seconds=1),
        "finished_at": finished,
        "inference_ms": 20.0,
        "image_format": "DICOM",
        "width": 2048,
        "height": 2500,
        "sop_instance_uid": f"1.2.3.{content}",
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.4",
        "modality": "CR",
        "accession_number": "ACC1",
        "patient_id": "PAT1",
    }
    values.update(fields)
    return ResultRecord(**values)


def audit(content: str | None, outcome: str = "screened", **fields: Any) -> AuditRecord:
    """A made-up audit row for the file holding ``content`` (None: unreadable)."""
    values: dict[str, Any] = {
        "source_path": f"/inbox/{content or 'unreadable'}.dcm",
        "file_size": 1234,
        "content_sha256": sha(content) if content else None,
        "outcome": outcome,
        "worker_host": "host1",
        "worker_id": "w1",
        "model_sha256": MODEL_A,
        "reason": "truncated JPEG" if outcome == "failed" else None,
        "destination_path": f"/done/{content}.dcm" if outcome != "failed" else f"/failed/{content}.dcm",
    }
    values.update(fields)
    return AuditRecord(**values)


def populate(store: Any, now: datetime) -> dict[str, Any]:
    """A known week: two busy hours, two models, a duplicate, failures, and one month-old result.

    Returns the hour labels, for the expectations.
    """
    base = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    h1, h2, old = (
        base + timedelta(minutes=10),
        base + timedelta(hours=1, minutes=10),
        now - timedelta(days=30),
    )
    store.record_batch(
        [
            result("a", finished_at=h1, inference_ms=10.0),
            result("b", positive=True, positive_probability=0.95, finished_at=h1, inference_ms=30.0),
        ],
        [audit("a", at=h1), audit("b", at=h1)],
    )
    store.record_batch(
        [
            result(
                "c", model=MODEL_B, positive=True, positive_probability=0.7, finished_at=h2, inference_ms=50.0
            ),
            result("d", model=MODEL_B, finished_at=h2, inference_ms=40.0),
        ],
        [
            audit("c", at=h2, model_sha256=MODEL_B),
            audit("d", at=h2, model_sha256=MODEL_B),
            audit("b", "duplicate", at=h2, source_path="/inbox/b-copy.dcm"),
            audit("x", "failed", at=h2),
            audit("y", "failed", at=h2),
            audit(None, "failed", at=h2, reason="not an image: the file is text", file_size=5),
        ],
    )
    store.record_batch(
        [result("e", positive=True, positive_probability=0.99, finished_at=old)], [audit("e", at=old)]
    )
    return {"h1": h1.strftime("%Y-%m-%d %H:00"), "h2": h2.strftime("%Y-%m-%d %H:00")}
