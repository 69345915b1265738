"""Questions operators ask of the results database, answered for a time window.

``summary`` gives counts, the positive rate, failures by reason, the slowest and fastest
hours, the model versions and the work per worker; ``flagged`` lists the files whose
content was screened positive (from the ``report_flagged`` view); ``studies`` gives each
DICOM study's verdict (from the ``report_studies`` view). Both only read: on SQLite they never take
the write lock, so a report cannot stall a worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Double, Engine, String, case, column, func, select, table, true

from worker.db.engine import reader
from worker.db.errors import database_errors
from worker.db.outbox import backlog
from worker.db.schema import UTCDateTime, audit_events, outbox, results
from worker.outcome import reason_kind

HOURS_SHOWN = 3
WORKER_COLUMNS = (
    "worker_host",
    "worker_id",
    "files",
    "screened",
    "duplicates",
    "failed",
    "first_at",
    "last_at",
    "files_per_s",
)
WORKER_OUTCOMES = ("screened", "duplicate", "failed")  # as the report_workers view (0003) counts them
MIN_RATE_SECONDS = 1.0  # a rate over a shorter span says nothing (a batch or two, timed by commits)

flagged_view = table(
    "report_flagged",
    column("result_id"),
    column("handled_at", UTCDateTime()),
    column("finished_at", UTCDateTime()),
    column("positive_probability", Double()),
    column("threshold", Double()),
    column("label", String()),
    column("model_name", String()),
    column("model_version", String()),
    column("modality", String()),
    column("study_instance_uid", String()),
    column("sop_instance_uid", String()),
    column("accession_number", String()),
    column("source_path", String()),
    column("destination_path", String()),
)

studies_view = table(
    "report_studies",
    column("study_instance_uid", String()),
    column("model_name", String()),
    column("model_version", String()),
    column("model_sha256", String()),
    column("films"),
    column("positive_films"),
    column("max_positive_probability", Double()),
    column("verdict", String()),
    column("accession_number", String()),
    column("first_result_at", UTCDateTime()),
    column("last_result_at", UTCDateTime()),
)
# What ``flagged_table`` keeps of ``flagged``'s columns, before where the file is.
FLAGGED_SHOWN = (
    "handled_at",
    "positive_probability",
    "threshold",
    "model_version",
    "modality",
    "accession_number",
)
STUDY_COLUMNS = (
    "last_result_at",
    "verdict",
    "films",
    "positive_films",
    "max_positive_probability",
    "model_version",
    "study_instance_uid",
    "accession_number",
)


@dataclass(frozen=True)
class Section:
    """A titled table: ``name`` keys it in JSON and CSV; its first ``keys`` columns name a row."""

    name: str
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    keys: int = 1


@dataclass(frozen=True)
class Report:
    title: str
    since: datetime | None
    until: datetime
    totals: dict[str, Any] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)


def summary(engine: Engine, since: datetime | None, *, now: datetime | None = None) -> Report:
    """Counts, positive rate, failures by reason, slowest and fastest hours, model versions,
    and the work per worker."""
    a, r = audit_events.c, results.c
    in_window_a = a.at >= since if since else true()
    in_window_r = r.finished_at >= since if since else true()
    positives = func.sum(case((r.positive.is_(True), 1), else_=0))
    with database_errors(), reader(engine).connect() as conn:
        outcomes = dict(
            conn.execute(select(a.outcome, func.count()).where(in_window_a).group_by(a.outcome)).all()
        )
        first, last = conn.execute(select(func.min(a.at), func.max(a.at)).where(in_window_a)).one()
        n_results, n_positive = conn.execute(select(func.count(), positives).where(in_window_r)).one()
        labels = conn.execute(
            select(r.label, func.count().label("n"))
            .where(in_window_r)
            .group_by(r.label)
            .order_by(func.count().desc(), r.label)
        ).all()
        failures, refusals = (
            conn.execute(
                select(a.reason, func.count(), func.max(a.at))
                .where(in_window_a, a.outcome == outcome)
                .group_by(a.reason)
                .order_by(func.count().desc(), a.reason)
            ).all()
            for outcome in ("failed", "out_of_scope")
        )
        hour = hour_bucket(a.at, engine.dialect.name)
        hours = conn.execute(
            select(hour, func.count(), func.avg(case((a.outcome == "screened", r.inference_ms))))
            .select_from(audit_events.outerjoin(results, r.id == a.result_id))
            .where(in_window_a)
            .group_by(hour)
        ).all()
        models = conn.execute(
            select(
                r.model_name,
                r.model_version,
                r.model_sha256,
                func.count(),
                positives,
                func.max(r.finished_at),
            )
            .where(in_window_r)
            .group_by(r.model_name, r.model_version, r.model_sha256)
            .order_by(func.max(r.finished_at).desc())
        ).all()
        workers = conn.execute(
            select(
                a.worker_host,
                a.worker_id,
                func.count(),
                *(func.sum(case((a.outcome == outcome, 1), else_=0)) for outcome in WORKER_OUTCOMES),
                func.min(a.at),
                func.max(a.at),
            )
            .where(in_window_a)
            .group_by(a.worker_host, a.worker_id)
            .order_by(a.worker_host, a.worker_id)
        ).all()

    files = sum(outcomes.values())
    report = Report("xray-screen summary", since, now or datetime.now(UTC))
    report.totals.update(
        files=files,
        screened=outcomes.get("screened", 0),
        duplicates=outcomes.get("duplicate", 0),
        failed=outcomes.get("failed", 0),
        out_of_scope=outcomes.get("out_of_scope", 0),
        results=n_results,
        positives=n_positive or 0,
        positive_rate=round((n_positive or 0) / n_results, 4) if n_results else None,
        first_file_at=first,
        last_file_at=last,
    )
    report.sections.append(
        Section(
            "labels",
            "Results by label",
            ("label", "results", "share"),
            [(label, n, round(n / n_results, 4)) for label, n in labels],
        )
    )
    report.sections.append(
        Section(
            "failures", "Failures by reason", ("reason", "files", "last_at"), [tuple(row) for row in failures]
        )
    )
    report.sections.append(
        Section(
            "out_of_scope",
            "Out of scope (refused by the gate) by reason",
            ("reason", "files", "last_at"),
            by_reason_kind(refusals),
        )
    )
    timed = sorted((row for row in hours if row[2] is not None), key=lambda row: (row[2], row[0]))
    columns = ("hour", "files", "mean_inference_ms")
    shown = [(h, n, round(ms, 1)) for h, n, ms in timed]
    slowest, fastest = shown[::-1][:HOURS_SHOWN], shown[:HOURS_SHOWN]
    report.sections.append(Section("slowest_hours", "Slowest hours (model ms per image)", columns, slowest))
    report.sections.append(Section("fastest_hours", "Fastest hours (model ms per image)", columns, fastest))
    report.sections.append(
        Section(
            "models",
            "Model versions",
            ("model_name", "model_version", "model_sha256", "results", "positives", "last_result_at"),
            [(name, version, sha[:12], n, p or 0, at) for name, version, sha, n, p, at in models],
        )
    )
    report.sections.append(
        Section(
            "workers",
            "Work per worker",
            WORKER_COLUMNS,
            [(*row, files_per_second(row[2], row[-2], row[-1])) for row in workers],
            keys=2,
        )
    )
    return report


def by_reason_kind(rows: Any) -> list[tuple[str, int, datetime]]:
    """(reason, files, last_at) rows merged by ``reason_kind`` (the gate's per-file score left
    out), most files first."""
    merged: dict[str, list[Any]] = {}
    for reason, n, last in rows:
        kind = reason_kind(reason)
        if kind in merged:
            merged[kind][0] += n
            merged[kind][1] = max(merged[kind][1], last)
        else:
            merged[kind] = [n, last]
    return sorted(((k, n, last) for k, (n, last) in merged.items()), key=lambda row: (-row[1], row[0]))


def files_per_second(files: int, first: datetime | None, last: datetime | None) -> float | None:
    """Files over the span from the first to the last (idle time included); None when that span
    is under ``MIN_RATE_SECONDS``: six files committed in one batch 40 ms apart are not a rate
    of 150,000 files a second."""
    if first is None or last is None or (last - first).total_seconds() < MIN_RATE_SECONDS:
        return None
    return round(files / (last - first).total_seconds(), 2)


def flagged(engine: Engine, since: datetime | None, *, now: datetime | None = None) -> Report:
    """Every file screened positive in the window, most probable first."""
    v = flagged_view.c
    when = func.coalesce(v.handled_at, v.finished_at)
    columns = (
        "handled_at",
        "positive_probability",
        "threshold",
        "label",
        "model_version",
        "modality",
        "study_instance_uid",
        "sop_instance_uid",
        "accession_number",
        "source_path",
        "destination_path",
    )
    query = select(when.label("handled_at"), *(v[name] for name in columns[1:]))
    if since is not None:
        query = query.where(when >= since)
    query = query.order_by(v.positive_probability.desc(), when, v.source_path)
    with database_errors(), reader(engine).connect() as conn:
        rows = [tuple(row) for row in conn.execute(query)]
    report = Report("xray-screen flagged files", since, now or datetime.now(UTC))
    report.sections.append(Section("flagged", "Flagged (positive) files", columns, rows))
    return report


def flagged_table(report: Report) -> Report:
    """``flagged``'s list narrowed for a terminal: when, P, the threshold, the model, the DICOM
    study's modality and accession number, and ``path``, where the file is now (where ``watch``
    filed it, else where a scan found it). The UIDs, the label (the positive class, in every
    row) and both paths stay in CSV and JSON, and in the table with ``--all-columns``."""
    (section,) = report.sections
    index = {name: i for i, name in enumerate(section.columns)}
    where, found = index["destination_path"], index["source_path"]
    rows = [(*(row[index[name]] for name in FLAGGED_SHOWN), row[where] or row[found]) for row in section.rows]
    columns = ("handled_at", "p", "threshold", "model", "modality", "accession", "path")
    return replace(report, sections=[replace(section, columns=columns, rows=rows)])


def studies(engine: Engine, since: datetime | None, *, now: datetime | None = None) -> Report:
    """Every DICOM study with a result in the window: positive when any of its screened films
    is, positive studies first. A study screened by two models has a row for each."""
    v = studies_view.c
    query = select(*(v[name] for name in STUDY_COLUMNS))
    if since is not None:
        query = query.where(v.last_result_at >= since)
    query = query.order_by(v.verdict.desc(), v.max_positive_probability.desc(), v.study_instance_uid)
    with database_errors(), reader(engine).connect() as conn:
        rows = [tuple(row) for row in conn.execute(query)]
    report = Report("xray-screen studies", since, now or datetime.now(UTC))
    positive = sum(1 for row in rows if row[1] == "POSITIVE")
    report.totals.update(studies=len(rows), positive_studies=positive, films=sum(row[2] for row in rows))
    report.sections.append(
        Section("studies", "Studies (positive when any screened film is)", STUDY_COLUMNS, rows)
    )
    return report


def deliveries(engine: Engine, since: datetime | None, *, now: datetime | None = None) -> Report:
    """Deliveries to the PACS, RIS and EHR (``xray-worker send``): objects and messages queued in
    the window per destination and status, with the oldest and the last error; then every
    destination's backlog, whatever the window."""
    o = outbox.c
    now = now or datetime.now(UTC)
    in_window = o.created_at >= since if since else true()
    with database_errors(), reader(engine).connect() as conn:
        groups = conn.execute(
            select(o.destination, o.status, func.count(), func.min(o.created_at), func.max(o.last_attempt_at))
            .where(in_window)
            .group_by(o.destination, o.status)
            .order_by(o.destination, o.status)
        ).all()
        rows = []
        for destination, status, n, oldest, last_attempt in groups:
            error = conn.execute(
                select(o.last_error)
                .where(in_window, o.destination == destination, o.status == status, o.last_error.is_not(None))
                .order_by(o.last_attempt_at.desc())
                .limit(1)
            ).scalar()
            rows.append((destination, status, n, _utc(oldest), _utc(last_attempt), error))
        left = backlog(conn, now)
    report = Report("xray-screen deliveries (PACS, RIS, EHR)", since, now)
    report.sections.append(
        Section(
            "deliveries",
            "Objects by destination and status",
            ("destination", "status", "objects", "oldest_queued_at", "last_attempt_at", "last_error"),
            rows,
            keys=2,
        )
    )
    report.sections.append(
        Section(
            "backlog",
            "Backlog per destination (all time)",
            ("destination", "pending", "due_now", "awaiting_commitment", "failed", "oldest_pending"),
            [
                (b.destination, b.pending, b.due, b.awaiting_commitment, b.failed, b.oldest_pending)
                for b in left
            ],
        )
    )
    return report


def _utc(value: Any) -> datetime | None:
    """MIN()/MAX() of a time column, as a UTC datetime on either backend."""
    if value is None:
        return None
    if isinstance(value, str):  # SQLite: the stored UTC text
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def hour_bucket(col: ColumnElement[Any], dialect: str) -> ColumnElement[str]:
    """``YYYY-MM-DD HH:00`` in UTC, on either backend."""
    if dialect == "sqlite":
        return func.strftime("%Y-%m-%d %H:00", col)
    return func.to_char(func.timezone("UTC", col), "YYYY-MM-DD HH24:00")
