"""Store.record_batch and known_results on real SQLite and Postgres databases."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from db_support import MODEL_A, MODEL_B, audit, result, sha
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError, StatementError

from worker.db.engine import make_engine, reader
from worker.db.schema import audit_events, results
from worker.db.store import Store

pytest_plugins = ["db_fixtures"]


def count(engine: Engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_a_batch_stores_results_and_links_its_audit_rows(store: Store):
    summary = store.record_batch(
        [result("a"), result("b", positive=True)],
        [audit("a"), audit("b"), audit(None, "failed", reason="not an image: the file is text")],
    )
    assert (summary.results_inserted, summary.results_existing, summary.audits_inserted) == (2, 0, 3)
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(audit_events.c.outcome, audit_events.c.reason, results.c.label, results.c.positive)
            .select_from(audit_events.outerjoin(results))
            .order_by(audit_events.c.source_path)
        ).all()
    assert [tuple(row) for row in rows] == [
        ("screened", None, "NORMAL", False),
        ("screened", None, "PNEUMONIA", True),
        ("failed", "not an image: the file is text", None, None),
    ]


def test_content_already_screened_is_not_stored_again_and_its_duplicate_links_to_it(store: Store):
    store.record_batch([result("a")], [audit("a")])
    again = result("a", positive=True)  # the same content and model: the first result stands
    summary = store.record_batch([again, again], [audit("a", "duplicate", source_path="/inbox/copy.dcm")])
    assert (summary.results_inserted, summary.results_existing) == (0, 1)
    with store.engine.connect() as conn:
        labels = conn.execute(select(results.c.label)).scalars().all()
        links = conn.execute(select(audit_events.c.result_id)).scalars().all()
    assert labels == ["NORMAL"]
    assert len(links) == 2 and len(set(links)) == 1 and links[0] is not None


def test_the_same_content_under_another_model_is_a_new_result(store: Store):
    store.record_batch([result("a"), result("a", model=MODEL_B)], [])
    assert count(store.engine, results) == 2


def test_retrying_a_committed_batch_duplicates_nothing(store: Store):
    batch = ([result("a")], [audit("a"), audit("b", "failed", model_sha256=None)])
    store.record_batch(*batch)
    summary = store.record_batch(*batch)  # e.g. the commit's acknowledgement was lost
    assert (summary.results_inserted, summary.audits_inserted) == (0, 0)
    assert (count(store.engine, results), count(store.engine, audit_events)) == (1, 2)


def test_results_and_audit_rows_commit_together_or_not_at_all(store: Store):
    bad_audit = audit("b", "failed", reason=None)  # a failure must say why
    with pytest.raises(IntegrityError):
        store.record_batch([result("a"), result("b")], [audit("a"), bad_audit])
    assert (count(store.engine, results), count(store.engine, audit_events)) == (0, 0)


def test_patient_identifiers_are_kept_only_when_asked(engine: Engine):
    Store(engine).record_batch([result("a")], [])
    Store(engine, store_patient_ids=True).record_batch([result("b")], [])
    with engine.connect() as conn:
        rows = conn.execute(
            select(results.c.accession_number, results.c.patient_id).order_by(results.c.content_sha256)
        ).all()
    by_content = dict(zip(sorted([sha("a"), sha("b")]), map(tuple, rows), strict=True))
    assert by_content[sha("a")] == (None, None)
    assert by_content[sha("b")] == ("ACC1", "PAT1")


def test_times_come_back_as_the_same_instant_in_utc(store: Store):
    paris = timezone(timedelta(hours=1))
    finished = datetime(2025, 11, 20, 13, 30, 15, 123456, tzinfo=paris)
    store.record_batch([result("a", finished_at=finished)], [])
    stored = store.known_results([sha("a")], MODEL_A)[sha("a")].finished_at
    assert stored == finished and stored.tzinfo == UTC and stored.hour == 12


def test_a_naive_time_is_refused(store: Store):
    with pytest.raises(StatementError, match="naive datetime"):
        store.record_batch([result("a", finished_at=datetime(2025, 11, 20, 12))], [])


def test_known_results_finds_what_this_model_already_screened(store: Store):
    store.record_batch([result("a", positive=True), result("b"), result("c", model=MODEL_B)], [])
    known = store.known_results([sha("a"), sha("b"), sha("c"), sha("new")], MODEL_A)
    assert set(known) == {sha("a"), sha("b")}
    assert known[sha("a")].label == "PNEUMONIA" and known[sha("a")].positive
    assert known[sha("a")].positive_probability == pytest.approx(0.91)
    assert store.known_results([], MODEL_A) == {}


def test_plans_of_committed_audit_rows_are_found_by_event_id(store: Store):
    done, failed, pending = audit("a"), audit("b", "failed", destination_path=None), audit("c")
    store.record_batch([result("a")], [done, failed])
    found = store.plans_of([done.event_id, failed.event_id, pending.event_id])
    assert list(found) == [done.event_id]
    assert found[done.event_id].destination_path == "/done/a.dcm"
    assert found[done.event_id].outcome == done.outcome
    store.set_destination(done.event_id, "/done/a-1.dcm")
    assert store.plans_of([done.event_id])[done.event_id].destination_path == "/done/a-1.dcm"


def test_a_reader_in_the_middle_of_a_report_does_not_stop_a_writer(db_url: str, store: Store):
    other = make_engine(db_url)
    try:
        with reader(other).begin() as report_conn:
            assert report_conn.execute(select(func.count()).select_from(results)).scalar_one() == 0
            store.record_batch([result("a")], [audit("a")])  # must neither wait 30 s nor fail
            assert report_conn.execute(select(func.count()).select_from(audit_events)).scalar_one() in (0, 1)
    finally:
        other.dispose()
    assert count(store.engine, results) == 1


def test_two_writers_with_overlapping_batches_never_fail_nor_duplicate(db_url: str, engine: Engine):
    contents = [f"img{i}" for i in range(60)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(worker: str, order: list[str]) -> None:
        writer = Store(make_engine(db_url))  # a worker process of its own, with its own connections
        try:
            start.wait()
            for i in range(0, len(order), 12):
                chunk = order[i : i + 12]
                audits = [audit(c, source_path=f"/{worker}/{c}.dcm", worker_id=worker) for c in chunk]
                writer.record_batch([result(c) for c in chunk], audits)
        except BaseException as exc:
            errors.append(exc)
        finally:
            writer.close()

    threads = [
        threading.Thread(target=write, args=("w1", contents)),
        threading.Thread(target=write, args=("w2", contents[::-1])),  # opposite order: deadlock bait
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with engine.connect() as conn:
        keys = conn.execute(select(results.c.content_sha256, results.c.model_sha256)).all()
        unlinked = conn.execute(
            select(func.count()).select_from(audit_events).where(audit_events.c.result_id.is_(None))
        ).scalar_one()
    assert sorted(k[0] for k in keys) == sorted(sha(c) for c in contents)
    assert len(set(keys)) == len(keys) == 60
    assert count(engine, audit_events) == 120 and unlinked == 0
