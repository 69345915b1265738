"""What the dashboard plots, read from the results database for one period: files per day
and outcome, verdicts and positives per day, the gate's refusals per day, failures by kind,
files per hour, work per worker and outcome, and PACS deliveries by destination and status.

Counted as ``worker/db/window.py`` counts for drift: verdicts are ``results`` rows (one per
image content), refusals the distinct contents of ``out_of_scope`` audit rows; files, failures
and work are audit rows (one per file handled). Only reads, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, case, distinct, func, select

from worker.db.engine import reader
from worker.db.errors import database_errors
from worker.db.report import hour_bucket
from worker.db.schema import audit_events, outbox, results
from worker.outcome import Outcome, reason_kind

OUTCOMES = tuple(o.value for o in (Outcome.SCREENED, Outcome.DUPLICATE, Outcome.OUT_OF_SCOPE, Outcome.FAILED))


@dataclass
class Activity:
    """One period's counts, keyed for plotting; every mapping is empty when nothing happened."""

    files_by_day: dict[date, dict[str, int]] = field(default_factory=dict)  # day -> outcome -> files
    verdicts_by_day: dict[date, tuple[int, int]] = field(default_factory=dict)  # day -> (films, positives)
    refused_by_day: dict[date, int] = field(default_factory=dict)  # day -> distinct contents refused
    failures: list[tuple[str, int, str]] = field(default_factory=list)  # (kind, files, an example reason)
    files_by_hour: dict[datetime, int] = field(default_factory=dict)
    workers: dict[str, dict[str, int]] = field(default_factory=dict)  # "host / id" -> outcome -> files
    deliveries: dict[str, dict[str, int]] = field(default_factory=dict)  # destination -> status -> objects
    # name, version, sha256, results, the operating threshold (the highest if it changed)
    models: list[tuple[str, str, str, int, float | None]] = field(default_factory=list)


def failure_kind(reason: str) -> str:
    """A failure reason as the dashboard groups it: its first clause, without the details
    that vary from file to file (``image too large: 65000x65000`` -> ``image too large``)."""
    return reason_kind(reason).split(": ", 1)[0]


def read_activity(engine: Engine, since: datetime | None, until: datetime) -> Activity:
    a, r, o = audit_events.c, results.c, outbox.c
    dialect = engine.dialect.name
    in_a = [a.at < until] + ([a.at >= since] if since else [])
    in_r = [r.finished_at < until] + ([r.finished_at >= since] if since else [])
    in_o = [o.created_at < until] + ([o.created_at >= since] if since else [])
    day_a, day_r = day_bucket(a.at, dialect), day_bucket(r.finished_at, dialect)
    activity = Activity()
    with database_errors(), reader(engine).connect() as conn:
        for day, outcome, n in conn.execute(
            select(day_a, a.outcome, func.count()).where(*in_a).group_by(day_a, a.outcome)
        ):
            activity.files_by_day.setdefault(_day(day), {})[outcome] = n
        positives = func.sum(case((r.positive.is_(True), 1), else_=0))
        for day, n, k in conn.execute(select(day_r, func.count(), positives).where(*in_r).group_by(day_r)):
            activity.verdicts_by_day[_day(day)] = (n, int(k or 0))
        for day, n in conn.execute(
            select(day_a, func.count(distinct(a.content_sha256)))
            .where(*in_a, a.outcome == "out_of_scope")
            .group_by(day_a)
        ):
            activity.refused_by_day[_day(day)] = n
        failed = conn.execute(
            select(a.reason, func.count()).where(*in_a, a.outcome == "failed").group_by(a.reason)
        ).all()
        hour = hour_bucket(a.at, dialect)
        for bucket, n in conn.execute(select(hour, func.count()).where(*in_a).group_by(hour)):
            activity.files_by_hour[datetime.strptime(bucket, "%Y-%m-%d %H:%M")] = n
        for host, worker, outcome, n in conn.execute(
            select(a.worker_host, a.worker_id, a.outcome, func.count())
            .where(*in_a)
            .group_by(a.worker_host, a.worker_id, a.outcome)
        ):
            activity.workers.setdefault(f"{host} / {worker}", {})[outcome] = n
        for destination, status, n in conn.execute(
            select(o.destination, o.status, func.count()).where(*in_o).group_by(o.destination, o.status)
        ):
            activity.deliveries.setdefault(destination, {})[status] = n
        activity.models = [
            tuple(row)
            for row in conn.execute(
                select(r.model_name, r.model_version, r.model_sha256, func.count(), func.max(r.threshold))
                .where(*in_r)
                .group_by(r.model_name, r.model_version, r.model_sha256)
                .order_by(func.count().desc())
            )
        ]
    activity.failures = _by_kind(failed)
    return activity


def _by_kind(rows: Any) -> list[tuple[str, int, str]]:
    kinds: dict[str, list[Any]] = defaultdict(lambda: [0, "", 0])  # files, example, its files
    for reason, n in rows:
        entry = kinds[failure_kind(reason)]
        entry[0] += n
        if n > entry[2]:
            entry[1], entry[2] = reason, n
    return sorted(((k, n, ex) for k, (n, ex, _) in kinds.items()), key=lambda row: (-row[1], row[0]))


def day_bucket(col: ColumnElement[Any], dialect: str) -> ColumnElement[str]:
    """``YYYY-MM-DD`` in UTC, on either backend."""
    if dialect == "sqlite":
        return func.strftime("%Y-%m-%d", col)
    return func.to_char(func.timezone("UTC", col), "YYYY-MM-DD")


def _day(text: str) -> date:
    return date.fromisoformat(text)
