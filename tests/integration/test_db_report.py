"""The report's numbers, and the SQL views analysts query, on a database with known contents."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from db_support import MODEL_A, MODEL_B, audit, populate, result
from sqlalchemy import Engine, literal_column, select, table

from worker.db.render import render
from worker.db.report import flagged, studies, summary
from worker.db.store import Store

pytest_plugins = ["db_fixtures"]

NOW = datetime.now(UTC)
WEEK = NOW - timedelta(days=7)


def section(report, name: str) -> list[tuple]:
    return next(s.rows for s in report.sections if s.name == name)


def test_an_empty_database_gives_zeros(engine: Engine):
    report = summary(engine, WEEK, now=NOW)
    assert report.totals["files"] == report.totals["results"] == 0 and report.totals["positive_rate"] is None
    assert all(not s.rows for s in report.sections)
    text = render(report, "table")
    assert "Files handled          0" in text and "(none)" in text and "n/a" in text
    assert json.loads(render(report, "json"))["totals"]["files"] == 0
    assert flagged(engine, WEEK, now=NOW).sections[0].rows == []


def test_the_summary_of_a_known_week(store: Store):
    hours = populate(store, NOW)
    report = summary(store.engine, WEEK, now=NOW)
    t = report.totals
    assert (t["files"], t["screened"], t["duplicates"], t["failed"]) == (8, 4, 1, 3)
    assert (t["results"], t["positives"], t["positive_rate"]) == (4, 2, 0.5)
    assert section(report, "labels") == [("NORMAL", 2, 0.5), ("PNEUMONIA", 2, 0.5)]
    assert [row[:2] for row in section(report, "failures")] == [
        ("truncated JPEG", 2),
        ("not an image: the file is text", 1),
    ]
    assert section(report, "slowest_hours") == [(hours["h2"], 6, 45.0), (hours["h1"], 2, 20.0)]
    assert section(report, "fastest_hours") == [(hours["h1"], 2, 20.0), (hours["h2"], 6, 45.0)]
    assert [row[:5] for row in section(report, "models")] == [
        ("pneumonia-resnet18", "B", MODEL_B[:12], 2, 1),
        ("pneumonia-resnet18", "A", MODEL_A[:12], 2, 1),
    ]


def test_flagged_lists_every_positive_file_most_probable_first(store: Store):
    populate(store, NOW)
    rows = flagged(store.engine, WEEK, now=NOW).sections[0].rows
    assert [(r[1], r[9]) for r in rows] == [
        (0.95, "/inbox/b.dcm"),
        (0.95, "/inbox/b-copy.dcm"),
        (0.7, "/inbox/c.dcm"),
    ]
    everything = flagged(store.engine, None, now=NOW).sections[0].rows
    assert [r[1] for r in everything] == [0.99, 0.95, 0.95, 0.7]


def test_studies_get_one_verdict_positive_when_any_screened_film_is(store: Store):
    h = NOW - timedelta(hours=2)
    store.record_batch(
        [  # study 1: a negative PA and a positive second film; study 2: two negatives
            result("pa1", study_instance_uid="1.1", finished_at=h),
            result("ap1", study_instance_uid="1.1", positive=True, positive_probability=0.8, finished_at=h),
            result("pa2", study_instance_uid="1.2", positive_probability=0.3, finished_at=h),
            result("pa2b", study_instance_uid="1.2", finished_at=h),
            result("png", study_instance_uid=None, positive=True, finished_at=h),  # no study: not listed
            # study 2 again with a newer model, which flags it: its own row
            result("pa2", model=MODEL_B, study_instance_uid="1.2", positive=True, finished_at=h),
            result("old", study_instance_uid="1.9", positive=True, finished_at=NOW - timedelta(days=30)),
        ],
        [audit(c, at=h) for c in ("pa1", "ap1", "pa2", "pa2b", "png")],
    )
    report = studies(store.engine, WEEK, now=NOW)
    rows = report.sections[0].rows
    got = [
        (r[6], r[5], r[1], r[2], r[3], r[4]) for r in rows
    ]  # study, model, verdict, films, positives, max P
    assert got == [
        ("1.2", "B", "POSITIVE", 1, 1, 0.91),
        ("1.1", "A", "POSITIVE", 2, 1, 0.8),
        ("1.2", "A", "NEGATIVE", 2, 0, 0.3),
    ]
    assert report.totals == {"studies": 3, "positive_studies": 2, "films": 5}
    table = render(report, "table")
    assert "studies 3   positive studies 2   films 5" in table and "POSITIVE" in table
    assert json.loads(render(report, "json"))["totals"]["positive_studies"] == 2
    assert "1.2" in render(report, "csv")
    assert len(studies(store.engine, None, now=NOW).sections[0].rows) == 4  # the month-old study too


def test_the_views_agree_with_the_data(store: Store):
    populate(store, NOW)

    def view(name: str, *columns: str) -> list[tuple]:
        cols = [literal_column(c) for c in columns] or [literal_column("*")]
        with store.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(select(*cols).select_from(table(name)))]

    daily = view("report_daily_counts", "outcome", "label", "files")
    totals: dict[tuple, int] = {}
    for outcome, label, files in daily:
        totals[(outcome, label)] = totals.get((outcome, label), 0) + files
    assert totals == {
        ("screened", "NORMAL"): 2,
        ("screened", "PNEUMONIA"): 3,
        ("duplicate", "PNEUMONIA"): 1,
        ("failed", None): 3,
    }
    failures = view("report_failures", "reason", "files")
    assert sorted(failures) == [("not an image: the file is text", 1), ("truncated JPEG", 2)]
    hourly = view(
        "report_hourly_throughput", "files", "screened", "duplicates", "failed", "mean_inference_ms"
    )
    assert sorted(hourly) == [(1, 1, 0, 0, 20.0), (2, 2, 0, 0, 20.0), (6, 2, 1, 3, 45.0)]
    models = view("report_models", "model_version", "results", "positives")
    assert sorted(models) == [("A", 3, 2), ("B", 2, 1)]
    assert sorted(r[0] for r in view("report_flagged", "positive_probability")) == [0.7, 0.95, 0.95, 0.99]


def test_csv_and_json_carry_the_same_numbers(store: Store):
    populate(store, NOW)
    report = summary(store.engine, WEEK, now=NOW)
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert {"section": "totals", "key": "", "metric": "files", "value": "8"} in rows
    assert {"section": "failures", "key": "truncated JPEG", "metric": "files", "value": "2"} in rows
    data = json.loads(render(report, "json"))
    assert data["totals"]["positive_rate"] == 0.5
    assert data["failures"][0]["reason"] == "truncated JPEG" and data["since"].startswith(
        WEEK.date().isoformat()
    )
    flagged_rows = list(csv.DictReader(io.StringIO(render(flagged(store.engine, WEEK, now=NOW), "csv"))))
    assert [r["source_path"] for r in flagged_rows] == ["/inbox/b.dcm", "/inbox/b-copy.dcm", "/inbox/c.dcm"]


def three_workers(store: Store) -> datetime:
    """Two workers on host1, one with the same id on host2, and a month-old scan."""
    t0 = (NOW - timedelta(hours=2)).replace(microsecond=0)
    at = [t0 + timedelta(seconds=s) for s in range(21)]
    store.record_batch(
        [result("a", finished_at=at[0]), result("b", finished_at=at[5]), result("c", finished_at=at[1])],
        [
            audit("a", at=at[0]),
            audit("a", "duplicate", at=at[10], source_path="/inbox/a-again.dcm"),
            audit("x", "failed", at=at[20]),
            audit("b", at=at[5], worker_id="w2"),
            audit("c", at=at[1], worker_host="host2"),
            audit("c", "duplicate", at=at[2], worker_host="host2", source_path="/inbox/c-again.dcm"),
        ],
    )
    old = NOW - timedelta(days=30)
    store.record_batch([result("e", finished_at=old)], [audit("e", at=old, worker_id="scan")])
    return t0


def test_the_work_per_worker(store: Store):
    t0 = three_workers(store)
    s = timedelta(seconds=1)
    assert section(summary(store.engine, WEEK, now=NOW), "workers") == [
        ("host1", "w1", 3, 1, 1, 1, t0, t0 + 20 * s, 0.15),
        ("host1", "w2", 1, 1, 0, 0, t0 + 5 * s, t0 + 5 * s, None),
        ("host2", "w1", 2, 1, 1, 0, t0 + s, t0 + 2 * s, 2.0),
    ]
    everything = section(summary(store.engine, None, now=NOW), "workers")
    assert [row[:3] for row in everything] == [
        ("host1", "scan", 1),
        ("host1", "w1", 3),
        ("host1", "w2", 1),
        ("host2", "w1", 2),
    ]
    text = render(summary(store.engine, WEEK, now=NOW), "table")
    assert "Work per worker:" in text
    assert re.search(r"host2 +w1 +2 +1 +1 +0 ", text)


def test_the_work_per_worker_in_csv_json_and_the_view(store: Store):
    three_workers(store)
    report = summary(store.engine, WEEK, now=NOW)
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    mine = {(r["key"], r["metric"]): r["value"] for r in rows if r["section"] == "workers"}
    assert mine[("host1/w1", "files")] == "3" and mine[("host2/w1", "duplicates")] == "1"
    assert mine[("host1/w2", "files_per_s")] == "" and mine[("host1/w1", "files_per_s")] == "0.15"
    workers = json.loads(render(report, "json"))["workers"]
    assert [(w["worker_host"], w["worker_id"], w["files"], w["failed"]) for w in workers] == [
        ("host1", "w1", 3, 1),
        ("host1", "w2", 1, 0),
        ("host2", "w1", 2, 0),
    ]
    with store.engine.connect() as conn:
        view = conn.execute(
            select(
                *(literal_column(c) for c in ("worker_host", "worker_id", "files", "screened", "duplicates"))
            )
            .select_from(table("report_workers"))
            .order_by(literal_column("worker_host"), literal_column("worker_id"))
        ).all()
    assert [tuple(r) for r in view] == [
        ("host1", "scan", 1, 1, 0),
        ("host1", "w1", 3, 1, 1),
        ("host1", "w2", 1, 1, 0),
        ("host2", "w1", 2, 1, 1),
    ]


def doc_queries() -> list[tuple[str | None, str]]:
    """The ```sql blocks of docs/reporting.md, each with the one shell it is for (None: both)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "reporting.md").read_text(encoding="utf-8")
    queries = []
    for block in re.findall(r"```sql\n(.*?)```", text, flags=re.DOTALL):
        first = block.splitlines()[0].strip()
        only = {"-- sqlite3": "sqlite", "-- psql": "postgresql"}.get(first)
        queries.append((only, block))
    return queries


def test_every_query_in_the_reporting_guide_runs(store: Store):
    populate(store, NOW)
    ran = 0
    with store.engine.connect() as conn:
        for only, query in doc_queries():
            if only in (None, store.engine.dialect.name):
                conn.exec_driver_sql(query).all()
                ran += 1
    assert ran >= 10
