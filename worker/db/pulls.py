"""What ``xray-worker pull`` remembers: per PACS and SOP Instance UID, what a query found and
where its retrieval stands; per run, the dates asked for (the high-water mark) and the counts.

Part of the database layer: it knows the tables, not DICOM (``worker/pull/`` builds on it).
Every function but ``report`` takes a ``Connection`` and runs in the caller's transaction.

A row's life: ``found`` (recorded before anything is retrieved) -> ``retrieved`` (it is in the
inbox), or ``known`` (a result of this model has its SOP Instance UID: screened already, never
retrieved), or ``failed`` after ``max_attempts`` failed retrieves, with the last reason.

Claims split the work between processes: ``claim`` takes up to N ``found`` rows nobody holds
(or whose holder's lease ran out: a process killed mid-retrieve), for ``lease`` seconds; only
the holder records their outcome. On PostgreSQL the rows are picked ``FOR UPDATE SKIP LOCKED``,
so two processes never wait on, nor take, the same rows; SQLite takes its write lock first.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, case, exists, func, or_, select, true, update

from worker.db.engine import reader
from worker.db.errors import database_errors
from worker.db.outbox import insert_new
from worker.db.outbox import utcnow as utcnow  # the clock the callers default to
from worker.db.report import Report, Section, hour_bucket
from worker.db.schema import pull_instances, pull_runs, results

CHUNK = 500
REASON_CHARS = 2000
RUNS_SHOWN = 50


class FoundInstance(Protocol):
    """What the pull layer hands over of each instance a query found."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    patient_id: str | None


@dataclass(frozen=True)
class Claim:
    """A claimed row, with what a retrieve needs."""

    id: int
    attempts: int
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    patient_id: str | None


# -- runs -----------------------------------------------------------------------------


def start_run(
    conn: Connection, source: str, owner: str, first: date | None, last: date | None, *, now: datetime
) -> int:
    """A new run of ``source``, running; its id."""
    values = {"source": source, "owner": owner, "started_at": now, "first_date": first, "last_date": last}
    values |= {"status": "running", "found": 0, "retrieved": 0, "failed": 0}
    return conn.execute(pull_runs.insert().values(values).returning(pull_runs.c.id)).scalar_one()


def mark_queried(conn: Connection, run_id: int, found: int, *, now: datetime, complete: bool = True) -> None:
    """What the run's query found is recorded; ``complete`` (no answer was left out): its dates
    count as asked, the source's high-water mark."""
    values = {"found": found, "queried_at": now if complete else None}
    conn.execute(update(pull_runs).where(pull_runs.c.id == run_id).values(values))


def finish_run(
    conn: Connection, run_id: int, *, retrieved: int, failed: int, reason: str | None, now: datetime
) -> None:
    """The run ended: ``done``, or ``failed`` with ``reason``."""
    status = "failed" if reason else "done"
    values = {
        "finished_at": now,
        "status": status,
        "retrieved": retrieved,
        "failed": failed,
        "reason": _cut(reason),
    }
    conn.execute(update(pull_runs).where(pull_runs.c.id == run_id).values(values))


def high_water(conn: Connection, source: str) -> date | None:
    """The last study date a completed query of ``source`` asked for (None: none did)."""
    r = pull_runs.c
    query = select(func.max(r.last_date)).where(r.source == source, r.queried_at.is_not(None))
    value = conn.execute(query).scalar()
    return date.fromisoformat(value) if isinstance(value, str) else value


# -- instances ------------------------------------------------------------------------


def record_found(
    conn: Connection, source: str, run_id: int, instances: Iterable[FoundInstance], *, now: datetime
) -> int:
    """Record what a query found; an instance recorded before keeps its row as it is. Returns
    how many rows were added."""
    rows = [
        {
            "source": source,
            "sop_instance_uid": i.sop_instance_uid,
            "study_instance_uid": i.study_uid,
            "series_instance_uid": i.series_uid,
            "sop_class_uid": i.sop_class_uid,
            "modality": i.modality,
            "patient_id": i.patient_id,
            "run_id": run_id,
            "state": "found",
            "attempts": 0,
            "found_at": now,
            "updated_at": now,
        }
        for i in {i.sop_instance_uid: i for i in instances}.values()
    ]
    return insert_new(conn, pull_instances, rows, ["source", "sop_instance_uid"])


def mark_known(conn: Connection, source: str, model_sha256: str, *, now: datetime) -> int:
    """``found`` rows of ``source`` whose SOP Instance UID this model has a result for: ``known``,
    never to be retrieved. Returns how many."""
    p, r = pull_instances.c, results.c
    screened = exists().where(
        r.study_instance_uid == p.study_instance_uid,
        r.sop_instance_uid == p.sop_instance_uid,
        r.model_sha256 == model_sha256,
    )
    stmt = (
        update(pull_instances)
        .where(p.source == source, p.state == "found", screened)
        .values(state="known", updated_at=now, claimed_by=None, claimed_until=None)
    )
    return conn.execute(stmt).rowcount


def holders(conn: Connection, source: str, prefix: str, *, now: datetime) -> list[str]:
    """The owners starting with ``prefix`` that hold live claims on ``source``'s rows."""
    p = pull_instances.c
    query = (
        select(p.claimed_by)
        .distinct()
        .where(p.source == source, p.state == "found", p.claimed_by.startswith(prefix, autoescape=True))
        .where(p.claimed_until >= now)
    )
    return [row[0] for row in conn.execute(query)]


def take_over(conn: Connection, source: str, owners: Sequence[str], *, now: datetime) -> int:
    """Free the claims of ``owners`` (processes known to be dead) at once. Returns how many."""
    p = pull_instances.c
    stmt = (
        update(pull_instances)
        .where(p.source == source, p.state == "found", p.claimed_by.in_(list(owners)))
        .values(claimed_by=None, claimed_until=None, updated_at=now)
    )
    return conn.execute(stmt).rowcount if owners else 0


def claim(
    conn: Connection,
    source: str,
    owner: str,
    limit: int,
    *,
    lease_seconds: float,
    now: datetime,
    exclude: Collection[int] = (),
) -> list[Claim]:
    """Up to ``limit`` ``found`` rows of ``source`` nobody holds now, oldest first, but those in
    ``exclude`` (a run's failed ones: tried again by the next run), held by ``owner`` for
    ``lease_seconds``."""
    p = pull_instances.c
    free = or_(p.claimed_until.is_(None), p.claimed_until < now)
    pick = (
        select(p.id)
        .where(p.source == source, p.state == "found", free, p.id.not_in(list(exclude)))
        .order_by(p.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = [row[0] for row in conn.execute(pick)]
    if not ids:
        return []
    until = now + timedelta(seconds=lease_seconds)
    conn.execute(update(pull_instances).where(p.id.in_(ids)).values(claimed_by=owner, claimed_until=until))
    query = select(
        p.id,
        p.attempts,
        p.study_instance_uid,
        p.series_instance_uid,
        p.sop_instance_uid,
        p.sop_class_uid,
        p.modality,
        p.patient_id,
    ).where(p.id.in_(ids))
    return [Claim(*row) for row in conn.execute(query.order_by(p.id))]


def renew(conn: Connection, source: str, owner: str, *, lease_seconds: float, now: datetime) -> int:
    """``owner`` is alive: its claims on ``source`` hold ``lease_seconds`` from now."""
    p = pull_instances.c
    stmt = (
        update(pull_instances)
        .where(p.source == source, p.state == "found", p.claimed_by == owner)
        .values(claimed_until=now + timedelta(seconds=lease_seconds))
    )
    return conn.execute(stmt).rowcount


def mark_retrieved(conn: Connection, owner: str, ids: Sequence[int], *, now: datetime) -> int:
    """These rows, still held by ``owner``, are in the inbox. Returns how many changed."""
    values = {"state": "retrieved", "retrieved_at": now, "reason": None}
    return _held(conn, owner, ids, {**values, "attempts": pull_instances.c.attempts + 1}, now)


def mark_failed(
    conn: Connection, owner: str, errors: Mapping[int, str], *, max_attempts: int, now: datetime
) -> int:
    """A failed retrieve of each row of ``errors`` (id -> reason), held by ``owner``: free again
    for a later claim, or ``failed`` once this was attempt ``max_attempts``."""
    p = pull_instances.c
    gives_up = p.attempts + 1 >= max_attempts
    changed = 0
    for reason, ids in _by_reason(errors).items():
        values = {"state": case((gives_up, "failed"), else_="found"), "attempts": p.attempts + 1}
        changed += _held(conn, owner, ids, {**values, "reason": reason}, now)
    return changed


def release(conn: Connection, owner: str, ids: Sequence[int], *, now: datetime) -> int:
    """Give back rows not tried (the run stopped, the PACS went away): no attempt counted."""
    return _held(conn, owner, ids, {}, now)


def counts(conn: Connection, source: str) -> dict[str, int]:
    """Rows of ``source`` per state."""
    p = pull_instances.c
    query = select(p.state, func.count()).where(p.source == source).group_by(p.state)
    return {state: n for state, n in conn.execute(query)}


def _held(conn: Connection, owner: str, ids: Sequence[int], values: dict[str, Any], now: datetime) -> int:
    p = pull_instances.c
    changed = 0
    for start in range(0, len(ids), CHUNK):
        stmt = (
            update(pull_instances)
            .where(p.id.in_(list(ids[start : start + CHUNK])), p.state == "found", p.claimed_by == owner)
            .values(**values, updated_at=now, claimed_by=None, claimed_until=None)
        )
        changed += conn.execute(stmt).rowcount
    return changed


def _by_reason(errors: Mapping[int, str]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for row_id, reason in errors.items():
        grouped.setdefault(_cut(reason) or "?", []).append(row_id)
    return grouped


def _cut(reason: str | None) -> str | None:
    return None if reason is None else reason[:REASON_CHARS]


# -- the report -----------------------------------------------------------------------


def report(engine: Engine, since: datetime | None, *, now: datetime | None = None) -> Report:
    """``report pulls``: per night (the UTC date a run started) and PACS, the instances its runs
    found and where each stands now; then the runs of the window, latest first."""
    p, r = pull_instances.c, pull_runs.c
    now = now or utcnow()
    night = func.substr(hour_bucket(r.started_at, engine.dialect.name), 1, 10)
    in_window = r.started_at >= since if since else true()

    def state(name: str) -> Any:
        return func.sum(case((p.state == name, 1), else_=0))

    with database_errors(), reader(engine).connect() as conn:
        nights = conn.execute(
            select(
                night,
                r.source,
                func.count(p.id),
                *(state(s) for s in ("retrieved", "known", "failed", "found")),
            )
            .select_from(pull_runs.join(pull_instances, p.run_id == r.id))
            .where(in_window)
            .group_by(night, r.source)
            .order_by(night, r.source)
        ).all()
        runs = conn.execute(
            select(
                r.started_at,
                r.source,
                r.status,
                r.first_date,
                r.last_date,
                r.found,
                r.retrieved,
                r.failed,
                r.reason,
            )
            .where(in_window)
            .order_by(r.started_at.desc(), r.id.desc())
            .limit(RUNS_SHOWN)
        ).all()
    result = Report("xray-screen pulls from PACS", since, now)
    result.sections.append(
        Section(
            "nights",
            "Instances found per night (the UTC date a run started) and PACS, and where each stands now",
            ("night", "source", "found", "retrieved", "already_screened", "failed", "waiting"),
            [tuple(row) for row in nights],
            keys=2,
        )
    )
    result.sections.append(
        Section(
            "runs",
            f"Runs, latest first (at most {RUNS_SHOWN})",
            (
                "started_at",
                "source",
                "status",
                "first_date",
                "last_date",
                "found",
                "retrieved",
                "failed",
                "reason",
            ),
            [(*row[:3], _iso(row[3]), _iso(row[4]), *row[5:]) for row in runs],
            keys=2,
        )
    )
    return result


def _iso(day: date | None) -> str | None:
    """A date as the reports show it (JSON has no dates): ``2026-12-08``."""
    return None if day is None else day.isoformat()
