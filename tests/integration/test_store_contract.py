"""One contract for every results store: the same tests on the in-memory store
(``worker/db/memory.py``), SQLite and PostgreSQL (``worker/db/store.py``).

What the pipeline relies on (``worker/pipeline/ports.py``'s ``Store``): a result is found
again by its content for its model only; a batch is idempotent (a result, an audit row,
an index row recorded twice is one row) and all-or-nothing; the skip index answers by path
and model; a committed file's plan can be read back and corrected. The unit tier trusts
``MemoryStore`` to behave as the database does: these tests are why it may.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from db_support import ENGINES, MODEL_A, MODEL_B, audit, result, sha

from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.memory import MemoryStore
from worker.db.outbox import OutboxItem
from worker.db.store import BatchSummary, FileStamp, ScannedRecord, Store
from worker.errors import TransientError
from worker.outcome import Outcome
from worker.pipeline import ports

pytest_plugins = ["db_fixtures"]

BACKENDS = [pytest.param("memory", id="memory"), *ENGINES]
MODEL_C = sha("model C")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ports.Store]:
    """An empty store: in memory, or a database at head (SQLite, or a fresh PostgreSQL schema)."""
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.db'}"
    else:
        url = request.getfixturevalue("postgres_schema").render_as_string(hide_password=False)
    engine = make_engine(url, create=True)
    migrate.upgrade(engine)
    yield Store(engine)
    engine.dispose()


def indexed(
    path: str, size: int = 100, mtime_ns: int = 1, *, model: str = MODEL_A, content: str | None = "a"
):
    return ScannedRecord(
        path=path,
        model_sha256=model,
        size=size,
        mtime_ns=mtime_ns,
        content_sha256=sha(content) if content else None,
        outcome=Outcome.SCREENED if content else Outcome.FAILED,
    )


def report(content: str, model: str, kind: str = "sr", **fields: Any) -> OutboxItem:
    """An object queued for a PACS with the result of ``content`` by ``model``."""
    values: dict[str, Any] = {
        "destination": "pacs",
        "kind": kind,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.22",
        "sop_instance_uid": f"2.25.{uuid.uuid4().int}",
        "study_instance_uid": "1.2.3",
        "payload": b"DICM",
        "result_key": (model, sha(content)),
    }
    values.update(fields)
    return OutboxItem(**values)


def test_the_store_is_a_store(store: ports.Store):
    assert isinstance(store, ports.Store)


# -- results ------------------------------------------------------------------------------


def test_a_result_is_known_to_its_model_and_to_no_other(store: ports.Store):
    summary = store.record_batch([result("a"), result("b", positive=True)], [audit("a"), audit("b")])
    assert summary == BatchSummary(results_inserted=2, results_existing=0, audits_inserted=2)
    known = store.known_results([sha("a"), sha("b"), sha("c")], MODEL_A)
    assert set(known) == {sha("a"), sha("b")}
    b = known[sha("b")]
    assert (b.content_sha256, b.label, b.positive, b.positive_probability) == (
        sha("b"),
        "PNEUMONIA",
        True,
        0.91,
    )
    assert b.probabilities == pytest.approx({"NORMAL": 0.09, "PNEUMONIA": 0.91})
    assert known[sha("a")].id != b.id
    assert store.known_results([sha("a"), sha("b")], MODEL_B) == {}


def test_a_result_already_stored_is_kept_as_it_was(store: ports.Store):
    store.record_batch([result("a")], [])
    again = result("a", positive=True)
    assert store.record_batch([again, again], []) == BatchSummary(0, 1, 0)
    assert store.known_results([sha("a")], MODEL_A)[sha("a")].label == "NORMAL"


def test_one_content_twice_in_a_batch_is_one_result_the_last(store: ports.Store):
    assert store.record_batch([result("a"), result("a", positive=True)], []) == BatchSummary(1, 0, 0)
    assert store.known_results([sha("a")], MODEL_A)[sha("a")].label == "PNEUMONIA"


def test_the_same_content_under_another_model_is_a_result_of_its_own(store: ports.Store):
    assert (
        store.record_batch([result("a"), result("a", model=MODEL_B, positive=True)], []).results_inserted == 2
    )
    assert store.known_results([sha("a")], MODEL_A)[sha("a")].label == "NORMAL"
    assert store.known_results([sha("a")], MODEL_B)[sha("a")].label == "PNEUMONIA"


def test_times_come_back_as_the_same_instant_in_utc(store: ports.Store):
    finished = datetime(2025, 11, 20, 13, 30, 15, 123456, tzinfo=timezone(timedelta(hours=1)))
    store.record_batch([result("a", finished_at=finished)], [])
    stored = store.known_results([sha("a")], MODEL_A)[sha("a")].finished_at
    assert stored == finished and stored.tzinfo == UTC


# -- a batch: idempotent, all or nothing ----------------------------------------------------


def test_an_empty_batch_records_nothing(store: ports.Store):
    assert store.record_batch([], []) == BatchSummary(0, 0, 0)
    assert store.known_results([], MODEL_A) == {}
    assert store.scan_index([], MODEL_A) == {}
    assert store.plans_of([]) == {}
    assert store.reported_by_other_models([], MODEL_A) == {}


def test_recording_the_same_batch_twice_records_it_once(store: ports.Store):
    batch = ([result("a")], [audit("a"), audit("b", "failed")], [indexed("/archive/a.dcm")])
    assert store.record_batch(*batch) == BatchSummary(1, 0, 2)
    assert store.record_batch(*batch) == BatchSummary(0, 1, 0)
    a, b = batch[1]
    plans = store.plans_of([a.event_id, b.event_id])
    # by event: plans_of is a mapping, and its order is the database's, not a promise
    assert [(plans[e].outcome, plans[e].reason) for e in (a.event_id, b.event_id)] == [
        ("screened", None),
        ("failed", "truncated JPEG"),
    ]
    assert store.scan_index(["/archive/a.dcm"], MODEL_A) == {"/archive/a.dcm": FileStamp(100, 1)}


def test_an_event_recorded_twice_keeps_its_first_row(store: ports.Store):
    first = audit("a")
    moved = replace(first, destination_path="/elsewhere/a.dcm")
    assert store.record_batch([result("a")], [first, moved]).audits_inserted == 1
    assert store.record_batch([], [replace(first, outcome=Outcome.DUPLICATE)]).audits_inserted == 0
    plan = store.plans_of([first.event_id])[first.event_id]
    assert (plan.destination_path, plan.outcome) == ("/done/a.dcm", "screened")


def test_a_row_the_database_refuses_leaves_nothing_of_its_batch(store: ports.Store):
    no_reason = audit("b", "failed", reason=None)  # a failure must say why
    with pytest.raises(Exception) as refused:
        store.record_batch([result("a")], [audit("a"), no_reason], [indexed("/archive/a.dcm")])
    assert not isinstance(refused.value, TransientError)  # not worth retrying as it is
    assert store.known_results([sha("a")], MODEL_A) == {}
    assert store.plans_of([no_reason.event_id]) == {}
    assert store.scan_index(["/archive/a.dcm"], MODEL_A) == {}


def test_a_naive_time_is_refused(store: ports.Store):
    with pytest.raises(Exception, match="naive datetime") as refused:
        store.record_batch([result("a", finished_at=datetime(2025, 11, 20, 12))], [])
    assert not isinstance(refused.value, TransientError)
    assert store.known_results([sha("a")], MODEL_A) == {}


def test_a_failure_before_the_commit_leaves_nothing(store: ports.Store):
    def crash() -> None:
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        store.record_batch([result("a")], [audit("a")], [indexed("/archive/a.dcm")], before_commit=crash)
    assert store.known_results([sha("a")], MODEL_A) == {}
    assert store.scan_index(["/archive/a.dcm"], MODEL_A) == {}
    assert store.record_batch([result("a")], [audit("a")]) == BatchSummary(1, 0, 1)  # then it goes in


# -- the skip index -------------------------------------------------------------------------


def test_the_scan_index_answers_with_size_and_mtime_for_its_model(store: ports.Store):
    store.record_batch(
        [result("a")],
        [],
        [indexed("/archive/a.dcm", 100, 5), indexed("/archive/bad.dcm", 7, 6, content=None)],
    )
    wanted = ["/archive/a.dcm", "/archive/bad.dcm", "/archive/new.dcm"]
    assert store.scan_index(wanted, MODEL_A) == {
        "/archive/a.dcm": FileStamp(100, 5),
        "/archive/bad.dcm": FileStamp(7, 6),
    }
    assert store.scan_index(wanted, MODEL_B) == {}


def test_the_scan_index_keeps_a_path_latest_row(store: ports.Store):
    store.record_batch([], [], [indexed("/archive/a.dcm", 100, 5)])
    store.record_batch([], [], [indexed("/archive/a.dcm", 120, 9), indexed("/archive/a.dcm", 130, 10)])
    store.record_batch([], [], [indexed("/archive/a.dcm", 1, 1, model=MODEL_B)])
    assert store.scan_index(["/archive/a.dcm"], MODEL_A) == {"/archive/a.dcm": FileStamp(130, 10)}
    assert store.scan_index(["/archive/a.dcm"], MODEL_B) == {"/archive/a.dcm": FileStamp(1, 1)}


def test_names_that_read_alike_are_indexed_apart(store: ports.Store):
    raw, literal = "/archive/caf\udce9.dcm", "/archive/caf\\xe9.dcm"  # a byte 0xE9; its spelling as text
    store.record_batch([], [], [indexed(raw, 1, 1)])
    assert store.scan_index([raw, literal], MODEL_A) == {raw: FileStamp(1, 1)}
    store.record_batch([], [], [indexed(literal, 2, 2)])
    assert store.scan_index([raw, literal], MODEL_A) == {raw: FileStamp(1, 1), literal: FileStamp(2, 2)}


# -- filing plans -----------------------------------------------------------------------------


def test_plans_are_the_committed_rows_with_a_destination(store: ports.Store):
    screened, failed, scanned = audit("a"), audit("b", "failed"), audit("c", destination_path=None)
    store.record_batch([result("a")], [screened, failed, scanned])
    plans = store.plans_of([screened.event_id, failed.event_id, scanned.event_id, uuid.uuid4()])
    assert set(plans) == {screened.event_id, failed.event_id}
    plan = plans[failed.event_id]
    assert (plan.destination_path, plan.outcome, plan.reason, plan.content_sha256) == (
        "/failed/b.dcm",
        "failed",
        "truncated JPEG",
        sha("b"),
    )


def test_set_destination_corrects_where_a_file_went(store: ports.Store):
    a = audit("a")
    store.record_batch([result("a")], [a])
    store.set_destination(a.event_id, "/done/a (2).dcm")
    plan = store.plans_of([a.event_id])[a.event_id]
    assert (plan.destination_path, plan.outcome) == ("/done/a (2).dcm", "screened")


def test_refile_fails_a_committed_file(store: ports.Store):
    a = audit("a")
    store.record_batch([result("a")], [a])
    store.refile(a.event_id, reason="cannot move it: disk full", destination_path="/failed/a.dcm")
    plan = store.plans_of([a.event_id])[a.event_id]
    assert (plan.destination_path, plan.outcome, plan.reason) == (
        "/failed/a.dcm",
        "failed",
        "cannot move it: disk full",
    )
    assert set(store.known_results([sha("a")], MODEL_A)) == {sha("a")}  # the result stays


def test_an_unknown_event_is_neither_moved_nor_refiled(store: ports.Store):
    unknown = uuid.uuid4()
    store.set_destination(unknown, "/done/x.dcm")
    store.refile(unknown, reason="gone", destination_path="/failed/x.dcm")
    assert store.plans_of([unknown]) == {}


# -- reports another model queued ------------------------------------------------------------


def test_a_report_of_another_model_is_found_the_latest_one(store: ports.Store):
    t = datetime(2025, 11, 20, 12, tzinfo=UTC)
    store.record_batch(
        [
            result("a", finished_at=t),
            result("a", model=MODEL_B, finished_at=t + timedelta(hours=1)),
            result("b", model=MODEL_B, finished_at=t),
        ],
        [],
        outbox=[report("a", MODEL_A), report("a", MODEL_B), report("b", MODEL_B, kind="sc")],
    )
    assert store.reported_by_other_models([sha("a"), sha("b")], MODEL_C) == {sha("a"): MODEL_B}
    assert store.reported_by_other_models([sha("a")], MODEL_B) == {sha("a"): MODEL_A}
    assert store.reported_by_other_models([sha("b")], MODEL_A) == {}  # a key image is no report


def test_a_report_without_its_result_is_no_report(store: ports.Store):
    store.record_batch([], [], outbox=[report("a", MODEL_A)])  # its result is not stored
    assert store.reported_by_other_models([sha("a")], MODEL_B) == {}
