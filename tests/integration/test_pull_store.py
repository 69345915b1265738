"""What ``pull`` remembers (worker/db/pulls.py), on SQLite and PostgreSQL: found rows recorded
once, claims that split the work and are taken over after their lease, outcomes recorded only by
the holder, instances this model screened already left alone, the high-water mark, the report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from db_support import MODEL_A, MODEL_B, audit, result
from sqlalchemy import Engine

from worker.db import pulls
from worker.db.store import Store

pytest_plugins = ["db_fixtures"]

NOW = datetime(2026, 12, 8, 2, 0, tzinfo=UTC)
LEASE = 600


@dataclass(frozen=True)
class Found:
    sop_instance_uid: str
    study_uid: str = "1.2.3"
    series_uid: str = "1.2.3.4"
    sop_class_uid: str = "1.2.840.10008.5.1.4.1.1.1"
    modality: str = "CR"
    patient_id: str | None = None


def found(n: int) -> list[Found]:
    return [Found(f"1.2.3.4.{i}") for i in range(1, n + 1)]


def new_run(engine: Engine, instances: list[Found], *, source: str = "main", last: date | None = None) -> int:
    with engine.begin() as conn:
        run = pulls.start_run(conn, source, "host:1", date(2026, 12, 1), last or date(2026, 12, 8), now=NOW)
        pulls.record_found(conn, source, run, instances, now=NOW)
        pulls.mark_queried(conn, run, len(instances), now=NOW)
    return run


def claim(engine: Engine, owner: str, n: int, now: datetime = NOW) -> list[pulls.Claim]:
    with engine.begin() as conn:
        return pulls.claim(conn, "main", owner, n, lease_seconds=LEASE, now=now)


def states(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return pulls.counts(conn, "main")


def test_what_a_query_found_is_recorded_once(engine: Engine):
    new_run(engine, found(5))
    with engine.begin() as conn:
        run = pulls.start_run(conn, "main", "host:2", None, None, now=NOW)
        assert pulls.record_found(conn, "main", run, found(7), now=NOW) == 2
        assert pulls.record_found(conn, "other", run, found(1), now=NOW) == 1  # another PACS: its own row
    assert states(engine) == {"found": 7}


def test_claims_split_the_work_and_a_dead_holders_claims_are_taken_over_after_the_lease(engine: Engine):
    new_run(engine, found(5))
    a, b = claim(engine, "a:1", 3), claim(engine, "b:1", 3)
    assert [c.sop_instance_uid for c in a] == ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"]
    assert [c.sop_instance_uid for c in b] == ["1.2.3.4.4", "1.2.3.4.5"]
    assert claim(engine, "c:1", 3) == []  # all held
    assert claim(engine, "c:1", 3, NOW + timedelta(seconds=LEASE - 1)) == []
    taken = claim(engine, "c:1", 3, NOW + timedelta(seconds=LEASE + 1))  # a and b went silent
    assert [c.id for c in taken] == [c.id for c in a]
    with engine.begin() as conn:  # a comes back too late: its outcome is not recorded
        assert pulls.mark_retrieved(conn, "a:1", [c.id for c in a], now=NOW) == 0
        assert pulls.mark_retrieved(conn, "c:1", [c.id for c in taken], now=NOW) == 3
    assert states(engine) == {"retrieved": 3, "found": 2}


def test_a_renewed_lease_holds_and_a_dead_process_of_this_host_is_freed_at_once(engine: Engine):
    new_run(engine, found(4))
    claim(engine, "host:1", 2)
    claim(engine, "other:9", 2)
    later = NOW + timedelta(seconds=LEASE - 10)
    with engine.begin() as conn:
        assert pulls.renew(conn, "main", "host:1", lease_seconds=LEASE, now=later) == 2
        assert sorted(pulls.holders(conn, "main", "host:", now=later)) == ["host:1"]
    assert claim(engine, "new:1", 4, NOW + timedelta(seconds=LEASE + 1)) != []  # other:9's, expired
    with engine.begin() as conn:
        assert pulls.take_over(conn, "main", ["host:1"], now=later) == 2
    assert len(claim(engine, "new:1", 4, later)) == 2


def test_failed_attempts_are_counted_until_max_attempts_and_a_release_counts_none(engine: Engine):
    new_run(engine, found(2))
    for attempt in range(1, 4):
        [one, two] = claim(engine, "a:1", 2)
        with engine.begin() as conn:
            pulls.mark_failed(
                conn, "a:1", {one.id: f"C-GET answered 0xA701 (try {attempt})"}, max_attempts=3, now=NOW
            )
            pulls.release(conn, "a:1", [two.id], now=NOW)
        if attempt < 3:
            assert states(engine) == {"found": 2}
    assert states(engine) == {"failed": 1, "found": 1}
    [left] = claim(engine, "a:1", 2)
    assert left.attempts == 0  # released, never tried


def test_instances_this_model_screened_are_known_and_not_claimed(engine: Engine):
    new_run(engine, found(3))
    store = Store(engine)
    store.record_batch(
        [
            result("first", model=MODEL_A, sop_instance_uid="1.2.3.4.1", study_instance_uid="1.2.3"),
            result("second", model=MODEL_B, sop_instance_uid="1.2.3.4.2", study_instance_uid="1.2.3"),
        ],
        [audit("first"), audit("second", model_sha256=MODEL_B)],
    )
    with engine.begin() as conn:
        assert pulls.mark_known(conn, "main", MODEL_A, now=NOW) == 1
    assert states(engine) == {"known": 1, "found": 2}
    assert [c.sop_instance_uid for c in claim(engine, "a:1", 5)] == ["1.2.3.4.2", "1.2.3.4.3"]


def test_the_high_water_mark_is_the_last_date_of_a_completed_query(engine: Engine):
    with engine.connect() as conn:
        assert pulls.high_water(conn, "main") is None
    new_run(engine, found(1), last=date(2026, 12, 5))
    with engine.begin() as conn:  # asked for later dates, but its query never completed
        pulls.start_run(conn, "main", "host:1", date(2026, 12, 6), date(2026, 12, 9), now=NOW)
    new_run(engine, found(1), source="other", last=date(2026, 12, 7))
    with engine.connect() as conn:
        assert pulls.high_water(conn, "main") == date(2026, 12, 5)


def test_the_report_counts_per_night_and_pacs_and_lists_the_runs(engine: Engine):
    run = new_run(engine, found(4))
    [one, two, *_] = claim(engine, "a:1", 4)
    with engine.begin() as conn:
        pulls.mark_retrieved(conn, "a:1", [one.id], now=NOW)
        pulls.mark_failed(conn, "a:1", {two.id: "C-GET answered 0xA701"}, max_attempts=1, now=NOW)
        pulls.finish_run(conn, run, retrieved=1, failed=1, reason=None, now=NOW)
        failed = pulls.start_run(conn, "main", "host:2", None, None, now=NOW + timedelta(hours=1))
        pulls.finish_run(conn, failed, retrieved=0, failed=0, reason="rejected the association", now=NOW)
    report = pulls.report(engine, NOW - timedelta(days=1), now=NOW)
    nights, runs = report.sections
    assert nights.rows == [("2026-12-08", "main", 4, 1, 0, 1, 2)]
    assert [(r[1], r[2], r[-1]) for r in runs.rows] == [
        ("main", "failed", "rejected the association"),
        ("main", "done", None),
    ]
    assert pulls.report(engine, NOW + timedelta(days=1), now=NOW).sections[0].rows == []


@pytest.mark.postgres
def test_two_processes_claiming_at_once_on_postgres_never_take_the_same_rows(postgres_schema):
    from worker.db import migrate
    from worker.db.engine import make_engine

    engine = make_engine(postgres_schema)
    try:
        migrate.upgrade(engine)
        new_run(engine, found(6))
        with engine.begin() as first:
            a = pulls.claim(first, "main", "a:1", 3, lease_seconds=LEASE, now=NOW)
            with engine.begin() as second:  # while the first still holds its row locks
                b = pulls.claim(second, "main", "b:1", 6, lease_seconds=LEASE, now=NOW)
        assert {c.id for c in a}.isdisjoint({c.id for c in b}) and len(a) + len(b) == 6
    finally:
        engine.dispose()
