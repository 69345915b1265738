"""``xray-worker report --format html``: one self-contained page, a chart per section with data,
words for a section without, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from db_support import audit, result
from sqlalchemy import URL, Engine, update

from worker.cli import cli
from worker.db import migrate, outbox
from worker.db.activity import failure_kind, read_activity
from worker.db.engine import make_engine
from worker.db.outbox import OutboxItem
from worker.db.schema import outbox as outbox_table
from worker.db.store import Store

pytest_plugins = ["db_fixtures"]

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "pneumonia-resnet18" / "export.pkl"
SHIPPED_SHA256 = "dd1b89a27da09b7811fbf9245a598666471395dc9364d0ad1f89550a8e266b91"
SECTIONS = (
    "volume",
    "positive-rate",
    "p-distribution",
    "refusals",
    "failures",
    "hourly",
    "workers",
    "deliveries",
)
NOW = datetime.now(UTC)


class Page(HTMLParser):
    """What a reader sees: the title, each section's charts (top-level <svg>) or its words."""

    def __init__(self, text: str):
        super().__init__()
        self.title, self.charts, self.empty, self.refs = "", {}, {}, []
        self._section: str | None = None
        self._depth = 0  # inside an <svg>
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.refs += [
            v for k, v in attrs if k in ("src", "href", "xlink:href") and v and not v.startswith("#")
        ]
        if tag == "div" and a.get("class") == "plot":
            self._section = a["data-section"]
            self.charts[self._section] = 0
        elif tag == "svg":
            if self._depth == 0 and self._section:
                self.charts[self._section] += 1
            self._depth += 1
        elif tag in ("title", "p"):
            self._in = tag if tag == "title" or a.get("class") == "empty" else None

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._depth -= 1
        elif tag == "section":
            self._section = None
        if tag in ("title", "p"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title" and self._depth == 0:
            self.title += data
        elif self._in == "p" and self._section:
            self.empty[self._section] = self.empty.get(self._section, "") + data


def dashboard(
    db_url: str, tmp_path: Path, *args: str, model: Path = SHIPPED, sha: str = SHIPPED_SHA256
) -> str:
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\npath = "{model}"\nsha256 = "{sha}"\n[database]\nurl = "{db_url}"\n')
    out = tmp_path / "dashboard.html"
    run = CliRunner().invoke(
        cli, ["--config", str(config), "report", "--format", "html", "--out", str(out), *args]
    )
    assert run.exit_code == 0, run.output
    assert f"wrote the dashboard to {out}" in run.output
    return out.read_text(encoding="utf-8")


def fill(store: Store) -> None:
    """Three days of work by two workers: verdicts, a duplicate, refusals, failures, deliveries."""
    for day in range(3):
        at = NOW - timedelta(days=day, hours=2)
        names = [f"d{day}-{i}" for i in range(12)]
        store.record_batch(
            [
                result(
                    n, finished_at=at, positive=i % 3 == 0, positive_probability=0.9 if i % 3 == 0 else 0.1
                )
                for i, n in enumerate(names)
            ],
            [audit(n, at=at, worker_host="xray-01" if i % 2 else "xray-02") for i, n in enumerate(names)]
            + [
                audit(names[0], "duplicate", at=at, source_path=f"/inbox/again-{day}.dcm"),
                audit(f"mr{day}", "out_of_scope", at=at, reason="Modality MR is not CR or DX"),
                audit(f"big{day}", "failed", at=at, reason=f"image too large: {60000 + day}x60000"),
                audit(
                    None,
                    "failed",
                    at=at,
                    reason="not an image: the file is text (expected PNG, JPEG or DICOM)",
                ),
            ],
        )
    with store.engine.begin() as conn:
        items = [
            OutboxItem("main", "sr", "1.2.840.10008.5.1.4.1.1.88.22", f"2.25.{i}", "1.2.3", b"x")
            for i in range(5)
        ]
        outbox.enqueue(conn, items, now=NOW - timedelta(hours=1))
        conn.execute(
            update(outbox_table).where(outbox_table.c.sop_instance_uid == "2.25.1").values(status="delivered")
        )


def test_an_empty_period_says_so_in_every_section(engine: Engine, db_url: str, tmp_path: Path):
    text = dashboard(db_url, tmp_path)
    page = Page(text)
    assert page.title.startswith("xray-screen dashboard")
    assert page.charts == dict.fromkeys(SECTIONS, 0)
    assert set(page.empty) == set(SECTIONS)
    assert "No files were handled in this period." in page.empty["volume"]
    assert "No PACS objects were queued" in page.empty["deliveries"]
    assert page.refs == []


def test_a_busy_period_has_a_chart_per_section(store: Store, db_url: str, tmp_path: Path):
    fill(store)
    text = dashboard(db_url, tmp_path, "--since", "7d")
    page = Page(text)
    assert page.charts == dict.fromkeys(SECTIONS, 1), page.empty
    assert page.empty == {}
    # the header: period, model, reference, database
    assert "pneumonia-resnet18 A" in text and "36 results" in text
    assert "site profile kermany-test: 289 films with a verdict, 71.3% positive" in text
    assert re.search(
        r"<dt>Period</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d to \d{4}-\d\d-\d\d \d\d:\d\d \(UTC\)</dd>", text
    )
    # the failures' table groups reasons by kind, with an example
    assert "<td>image too large</td><td class=n>3</td>" in text
    assert "<td>not an image</td><td class=n>3</td>" in text
    assert '<div class="tile"><b>33.3%</b><span>positive (12 films)</span></div>' in text


def test_the_page_is_self_contained(store: Store, db_url: str, tmp_path: Path):
    fill(store)
    text = dashboard(db_url, tmp_path)
    page = Page(text)
    assert page.refs == []  # no src, href or xlink:href but in-page anchors
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not re.search(r"<(script|link|img|iframe|object)\b", text)
    assert "@import" not in text and "url(http" not in text and "<?xml" not in text


def test_a_model_without_a_baseline_gets_its_charts_and_says_why(store: Store, db_url: str, tmp_path: Path):
    fill(store)
    model = tmp_path / "mine" / "export.pkl"
    model.parent.mkdir()
    model.write_bytes(b"not loaded by the dashboard")
    text = dashboard(db_url, tmp_path, model=model, sha="0" * 64)
    page = Page(text)
    assert page.charts == dict.fromkeys(SECTIONS, 1)
    assert "no site baseline at" in text
    assert "The centre line is this period&#x27;s overall rate: no reference" in text


@pytest.mark.postgres
def test_the_database_password_is_masked(postgres_schema: URL, tmp_path: Path):
    """Only a PostgreSQL URL holds a password; the server's trust authentication ignores it."""
    engine = make_engine(postgres_schema)
    migrate.upgrade(engine)
    fill(Store(engine))
    engine.dispose()
    secret = postgres_schema.set(password="s3cr3t-pw").render_as_string(hide_password=False)  # noqa: S106
    text = dashboard(secret, tmp_path)
    assert "s3cr3t-pw" not in text and "***" in text
    assert Page(text).charts == dict.fromkeys(SECTIONS, 1)


def test_activity_counts_by_day_kind_worker_and_status(store: Store, engine: Engine):
    fill(store)
    a = read_activity(engine, NOW - timedelta(days=7), NOW)
    assert sum(a.files_by_day[d].get("screened", 0) for d in a.files_by_day) == 36
    assert sum(n for n, _ in a.verdicts_by_day.values()) == 36
    assert sum(k for _, k in a.verdicts_by_day.values()) == 12
    assert sum(a.refused_by_day.values()) == 3
    assert [(kind, n) for kind, n, _ in a.failures] == [("image too large", 3), ("not an image", 3)]
    assert a.workers == {
        "xray-01 / w1": {"screened": 18},
        "xray-02 / w1": {"screened": 18},
        "host1 / w1": {"duplicate": 3, "out_of_scope": 3, "failed": 6},
    }
    assert a.deliveries == {"main": {"pending": 4, "delivered": 1}}
    assert sum(a.files_by_hour.values()) == 3 * 16


def test_failure_kinds():
    assert failure_kind("image too large: 65000x65000") == "image too large"
    assert failure_kind("truncated JPEG") == "truncated JPEG"
    assert (
        failure_kind(
            "unlike the films this model was trained on: distance 1.35 from them, over the limit 1.00"
        )
        == "unlike the films this model was trained on"
    )
    assert (  # as an earlier release worded it
        failure_kind("unlike the films this model knows: score 1.35 > 1.00")
        == "unlike the films this model was trained on"
    )
