"""The PACS outbox on SQLite and Postgres: queueing is idempotent and shares the results'
transaction; each mark_* changes only the rows it should."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from db_support import MODEL_A, MODEL_B, audit, result, sha
from sqlalchemy import Engine, func, select

from worker.db import outbox
from worker.db.outbox import OutboxItem
from worker.db.schema import outbox as outbox_table
from worker.db.schema import results
from worker.db.store import Store

pytest_plugins = ["db_fixtures"]

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
SR = "1.2.840.10008.5.1.4.1.1.88.22"


def item(n: int, destination: str = "main", **fields) -> OutboxItem:
    values = {
        "destination": destination,
        "kind": "sr",
        "sop_class_uid": SR,
        "sop_instance_uid": f"2.25.{n}",
        "study_instance_uid": "1.2.3",
        "payload": b"DICM" + bytes([n % 256]) * 100,
    }
    values.update(fields)
    return OutboxItem(**values)


def rows(engine: Engine) -> dict[str, dict]:
    with engine.connect() as conn:
        return {r.sop_instance_uid: r._asdict() for r in conn.execute(select(outbox_table))}


def test_enqueue_is_idempotent_per_object_and_destination(engine: Engine):
    with engine.begin() as conn:
        assert outbox.enqueue(conn, [item(1), item(2), item(1, "backup")], now=T0) == 3
    with engine.begin() as conn:  # the same objects again, one new: only the new one is added
        assert outbox.enqueue(conn, [item(1), item(2, payload=b"other"), item(3)], now=T0) == 1
    stored = rows(engine)
    assert len(stored) == 3 and stored["2.25.2"]["payload"] == item(2).payload  # the first copy is kept
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox_table)).scalar_one() == 4
    row = stored["2.25.3"]
    assert (row["status"], row["attempts"], row["next_attempt_at"]) == ("pending", 0, T0)


def test_due_takes_pending_rows_whose_time_has_come_oldest_first(engine: Engine):
    with engine.begin() as conn:
        outbox.enqueue(conn, [item(1), item(2)], now=T0)
        outbox.enqueue(conn, [item(3)], now=T0 - timedelta(minutes=1))
        outbox.enqueue(conn, [item(4, "backup")], now=T0)
        outbox.enqueue(conn, [item(5)], now=T0 + timedelta(hours=1))  # not due yet
    with engine.begin() as conn:
        due = outbox.due(conn, "main", 10, T0)
        assert [d.sop_instance_uid for d in due] == ["2.25.3", "2.25.1", "2.25.2"]
        assert [d.sop_instance_uid for d in outbox.due(conn, "main", 2, T0)] == ["2.25.3", "2.25.1"]
        outbox.mark_delivered(conn, [due[0].id], now=T0)
        assert [d.sop_instance_uid for d in outbox.due(conn, "main", 10, T0)] == ["2.25.1", "2.25.2"]
    assert due[1].payload == item(1).payload and due[1].attempts == 0


def test_retries_back_off_then_fail_with_the_reason(engine: Engine):
    with engine.begin() as conn:
        outbox.enqueue(conn, [item(1), item(2)], now=T0)
        [a, b] = outbox.due(conn, "main", 10, T0)
        outbox.mark_retry(
            conn, {a.id: "C-STORE answered 0xA700", b.id: "no association"}, delay=30, max_attempts=2, now=T0
        )
        assert outbox.due(conn, "main", 10, T0 + timedelta(seconds=29)) == []
        assert len(outbox.due(conn, "main", 10, T0 + timedelta(seconds=30))) == 2
    row = rows(engine)["2.25.1"]
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 1, "C-STORE answered 0xA700")
    assert row["next_attempt_at"] == T0 + timedelta(seconds=30) and row["last_attempt_at"] == T0
    with engine.begin() as conn:
        outbox.mark_retry(conn, {a.id: "C-STORE answered 0xA700 again"}, delay=60, max_attempts=2, now=T0)
        outbox.mark_delivered(conn, [b.id], now=T0)
        outbox.mark_delivered(conn, [a.id], now=T0)  # a failed row is not delivered by mistake
    stored = rows(engine)
    assert (stored["2.25.1"]["status"], stored["2.25.1"]["attempts"]) == ("failed", 2)
    assert stored["2.25.1"]["last_error"] == "C-STORE answered 0xA700 again"
    assert (stored["2.25.2"]["status"], stored["2.25.2"]["attempts"], stored["2.25.2"]["last_error"]) == (
        "delivered",
        2,
        None,
    )
    with engine.begin() as conn:
        assert outbox.requeue(conn, "main", now=T0) == 1
    assert (rows(engine)["2.25.1"]["status"], rows(engine)["2.25.1"]["attempts"]) == ("pending", 0)


def test_commitment_reports_commit_or_send_back_only_their_transaction(engine: Engine):
    with engine.begin() as conn:
        outbox.enqueue(conn, [item(n) for n in range(1, 5)], now=T0)
        ids = [d.id for d in outbox.due(conn, "main", 10, T0)]
        outbox.mark_delivered(conn, ids[:3], now=T0, transaction_uid="2.25.900")
        outbox.mark_delivered(conn, ids[3:], now=T0, transaction_uid="2.25.901")
        done, back = outbox.mark_committed(
            conn, "main", "2.25.900", ["2.25.1", "2.25.4"], {"2.25.2": "reason 0x0110"}, delay=10, now=T0
        )
        assert (done, back) == (1, 1)  # 2.25.4 belongs to another transaction
        assert outbox.mark_committed(conn, "backup", "2.25.900", ["2.25.3"], now=T0) == (0, 0)
    stored = rows(engine)
    assert stored["2.25.1"]["status"] == "committed" and stored["2.25.1"]["committed_at"] == T0
    assert (stored["2.25.2"]["status"], stored["2.25.2"]["last_error"]) == ("pending", "reason 0x0110")
    assert stored["2.25.2"]["commitment_transaction_uid"] is None
    assert stored["2.25.3"]["status"] == "delivered"
    with engine.begin() as conn:  # no report for an hour: sent (and committed) again
        assert outbox.expire_commitments(conn, "main", T0 + timedelta(hours=1)) == 2
        [b] = outbox.backlog(conn, T0 + timedelta(hours=1))
    assert (b.destination, b.pending, b.awaiting_commitment, b.failed) == ("main", 3, 0, 0)
    assert b.oldest_pending == T0


def test_backlog_per_destination(engine: Engine):
    with engine.begin() as conn:
        outbox.enqueue(conn, [item(1), item(2), item(3, "backup")], now=T0)
        outbox.enqueue(conn, [item(4)], now=T0 + timedelta(hours=1))
        [first, *_] = outbox.due(conn, "main", 1, T0)
        outbox.mark_failed(conn, {first.id: "payload is not DICOM"}, now=T0)
        backlog = {b.destination: b for b in outbox.backlog(conn, T0)}
    assert (backlog["main"].pending, backlog["main"].due, backlog["main"].failed) == (2, 1, 1)
    assert backlog["main"].oldest_pending == T0
    assert (backlog["backup"].pending, backlog["backup"].due) == (1, 1)


def test_record_batch_queues_objects_with_their_results(store: Store):
    linked = item(1, result_key=(MODEL_A, sha("a")))
    store.record_batch([result("a")], [audit("a")], outbox=[linked, item(2)])
    store.record_batch([result("a")], [audit("a")], outbox=[linked])  # a retried batch: no second copy
    stored = rows(store.engine)
    with store.engine.connect() as conn:
        result_id = conn.execute(select(results.c.id)).scalar_one()
    assert stored["2.25.1"]["result_id"] == result_id and stored["2.25.2"]["result_id"] is None
    assert len(stored) == 2


def test_a_batch_the_database_refuses_queues_nothing(store: Store):
    """A failed outcome without its reason violates a CHECK: neither the result nor the objects."""
    with pytest.raises(Exception, match=r"(?i)check|constraint"):
        store.record_batch(
            [result("b")], [audit("b"), audit("c", "failed", reason=None)], outbox=[item(7), item(8)]
        )
    assert rows(store.engine) == {}
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(results)).scalar_one() == 0
    crash = RuntimeError("killed before the commit")

    def before_commit() -> None:
        raise crash

    with pytest.raises(RuntimeError):
        store.record_batch([result("b")], [audit("b")], outbox=[item(7)], before_commit=before_commit)
    assert rows(store.engine) == {}


def test_the_deliveries_report_counts_per_destination_and_status(engine: Engine):
    from worker.db.render import render
    from worker.db.report import deliveries

    with engine.begin() as conn:
        outbox.enqueue(conn, [item(1), item(2), item(3), item(4, "backup")], now=T0)
        [a, b, *_] = outbox.due(conn, "main", 10, T0)
        outbox.mark_delivered(conn, [a.id], now=T0)
        outbox.mark_retry(
            conn, {b.id: "no association with PACS1@10.0.0.20:104"}, delay=3600, max_attempts=5, now=T0
        )
    report = deliveries(engine, None, now=T0 + timedelta(minutes=5))
    by_status = {(r[0], r[1]): r for r in report.sections[0].rows}
    assert by_status[("main", "pending")][2] == 2 and by_status[("main", "delivered")][2] == 1
    assert by_status[("main", "pending")][5] == "no association with PACS1@10.0.0.20:104"
    assert by_status[("main", "pending")][3] == T0
    backlog = {r[0]: r for r in report.sections[1].rows}
    assert backlog["main"][1:5] == (2, 1, 0, 0) and backlog["backup"][1:3] == (1, 1)  # 1 of main's is due
    assert "no association with PACS1" in render(report, "table")


def test_the_reports_a_new_models_results_replace_are_found(store: Store):
    reported = item(1, kind="sr", result_key=(MODEL_A, sha("a")))
    key_image = item(2, kind="sc", result_key=(MODEL_A, sha("b")))
    store.record_batch(
        [result("a", positive=True), result("b", positive=True), result("c")],
        [audit("a"), audit("b"), audit("c")],
        outbox=[reported, key_image],
    )
    # Only a content with a report queued by another model: not b (a key image), not c (none).
    assert store.reported_by_other_models([sha("a"), sha("b"), sha("c")], MODEL_B) == {sha("a"): MODEL_A}
    assert store.reported_by_other_models([sha("a")], MODEL_A) == {}  # its own report replaces nothing
