"""Writing results and audit rows, and asking which content is already screened.

``Store.record_batch`` is where a batch is committed: its results and its audit rows in
one transaction, idempotently. A result whose content was already screened by the same
model is kept as it is (``INSERT ... ON CONFLICT DO NOTHING``), and an audit row whose
``event_id`` is already stored is skipped, so retrying a batch after a dropped connection
cannot duplicate anything. A scan's batch also updates its skip index (``scanned_files``)
in that transaction, and ``scan_index`` reads it back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from worker.db.engine import make_engine, reader
from worker.db.errors import database_errors
from worker.db.migrate import require_head
from worker.db.outbox import OutboxItem, enqueue
from worker.db.schema import audit_events, scanned_files
from worker.db.schema import outbox as outbox_table
from worker.db.schema import results as results_table
from worker.names import as_hex, as_text, from_stored
from worker.outcome import Outcome

# Keeps IN (...) lists and multi-row inserts well under every backend's parameter limit.
CHUNK = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ResultRecord:
    """What one model said about one image content."""

    content_sha256: str
    label: str
    positive_class: str
    positive_probability: float
    probabilities: dict[str, float]
    threshold: float | None  # None: the label is the most probable class
    model_name: str
    model_version: str
    model_sha256: str
    preprocessing: str
    device: str
    queued_at: datetime | None
    started_at: datetime
    finished_at: datetime
    inference_ms: float
    image_format: str
    width: int
    height: int
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    modality: str | None = None
    accession_number: str | None = None  # stored only with store_patient_ids
    patient_id: str | None = None  # stored only with store_patient_ids
    gate_score: float | None = None  # the image gate's score (None: the model has no image gate)
    site_profile: str | None = None  # the site profile the label was given under
    heatmap_path: str | None = None  # the Grad-CAM overlay written for it ([explain]), if any

    @property
    def positive(self) -> bool:
        return self.label == self.positive_class


@dataclass(frozen=True)
class AuditRecord:
    """One file handled: where it was, what became of it, who handled it.

    The row is linked to the result for (``content_sha256``, ``model_sha256``) when one is
    stored, whether this batch or an earlier one wrote it.
    """

    source_path: str
    file_size: int | None
    content_sha256: str | None  # None: the file could not be read
    outcome: Outcome
    worker_host: str
    worker_id: str
    reason: str | None = None  # required when outcome is "failed"
    destination_path: str | None = None
    model_sha256: str | None = None
    at: datetime = field(default_factory=utcnow)
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True)
class StoredResult:
    """An earlier result, enough to file a duplicate without running the model again."""

    id: int
    content_sha256: str
    label: str
    positive: bool
    positive_probability: float
    probabilities: dict[str, float]
    finished_at: datetime


@dataclass(frozen=True)
class FilingPlan:
    """A committed audit row's verdict: where its file goes, and why."""

    destination_path: str
    outcome: str
    reason: str | None
    content_sha256: str | None


@dataclass(frozen=True)
class FileStamp:
    """What a directory entry says of a file: unchanged size and mtime mean unchanged content."""

    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScannedRecord:
    """An archive file a scan handled, as it was then: one row of the scan's skip index.

    Linked to the result for (``content_sha256``, ``model_sha256``) when one is stored.
    """

    path: str
    model_sha256: str
    size: int
    mtime_ns: int
    content_sha256: str | None
    outcome: Outcome
    recorded_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class BatchSummary:
    results_inserted: int
    results_existing: int
    audits_inserted: int


class Store:
    """The results database, for the worker and for bulk scans."""

    def __init__(self, engine_or_url: Engine | str, *, store_patient_ids: bool = False):
        self.engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
        self.store_patient_ids = store_patient_ids

    def require_head(self) -> None:
        """Refuse a database whose schema is not the one this code writes (``ConfigError``);
        ``TransientError`` when it cannot be reached."""
        with database_errors():
            require_head(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def record_batch(
        self,
        results: Sequence[ResultRecord],
        audits: Sequence[AuditRecord],
        scanned: Sequence[ScannedRecord] = (),
        *,
        outbox: Sequence[OutboxItem] = (),
        before_commit: Callable[[], None] | None = None,
    ) -> BatchSummary:
        """Commit results, their audit rows and a scan's index rows together, or nothing.

        ``TransientError`` means nothing was committed, or the commit's fate is unknown:
        retrying the same batch is safe either way. ``before_commit`` runs with every row
        written and the transaction still open (the chaos harness's crash point). ``outbox``:
        DICOM objects for PACS destinations, queued in the same transaction (an object already
        queued is left as it is); an item's ``result_key`` links it to its result.
        """
        # One lock order for every writer, so two Postgres transactions never deadlock.
        rows = sorted(
            {(r.model_sha256, r.content_sha256): self._result_row(r) for r in results}.values(),
            key=lambda row: (row["model_sha256"], row["content_sha256"]),
        )
        with database_errors(), self.engine.begin() as conn:
            inserted = 0
            for chunk in chunks(rows, CHUNK):
                stmt = _insert_ignoring_duplicates(conn, results_table, ["content_sha256", "model_sha256"])
                inserted += len(conn.execute(stmt.returning(results_table.c.id), chunk).all())
            keys = {key for a in audits if (key := _result_key(a))}
            keys |= {(s.model_sha256, s.content_sha256) for s in scanned if s.content_sha256}
            ids = _result_ids(conn, keys)
            audit_rows = [self._audit_row(a, ids.get(k) if (k := _result_key(a)) else None) for a in audits]
            audits_inserted = 0
            for chunk in chunks(audit_rows, CHUNK):
                stmt = _insert_ignoring_duplicates(conn, audit_events, ["event_id"])
                audits_inserted += len(conn.execute(stmt.returning(audit_events.c.id), chunk).all())
            # One row per key (an upsert may not touch a row twice), in one lock order.
            latest = {(as_text(s.path), s.model_sha256, as_hex(s.path) or ""): s for s in scanned}
            scanned_rows = [self._scanned_row(latest[key], ids) for key in sorted(latest)]
            for chunk in chunks(scanned_rows, CHUNK):
                conn.execute(_upsert(conn, scanned_files, ["path", "model_sha256", "path_hex"]), chunk)
            if outbox:
                _enqueue(conn, outbox)
            if before_commit is not None:
                before_commit()
        return BatchSummary(inserted, len(rows) - inserted, audits_inserted)

    def scan_index(self, paths: Iterable[str], model_sha256: str) -> dict[str, FileStamp]:
        """Size and mtime of these paths when this model's scans last handled them, by path.

        Two names that read the same as text (a literal ``\\xe9`` in one, a byte 0xE9 in the
        other) have rows of their own, told apart by ``path_hex``.
        """
        s = scanned_files.c
        by_text: dict[str, list[str]] = {}
        for path in set(paths):
            by_text.setdefault(as_text(path), []).append(path)
        found: dict[str, FileStamp] = {}
        with database_errors(), reader(self.engine).connect() as conn:
            for chunk in chunks(sorted(by_text), CHUNK):
                query = select(s.path, s.path_hex, s.size, s.mtime_ns).where(
                    s.model_sha256 == model_sha256, s.path.in_(chunk)
                )
                for row in conn.execute(query):
                    for path in by_text[row.path]:
                        if (as_hex(path) or "") == row.path_hex:
                            found[path] = FileStamp(row.size, row.mtime_ns)
        return found

    def known_results(self, content_sha256s: Iterable[str], model_sha256: str) -> dict[str, StoredResult]:
        """The results this model already has for these contents, by content SHA-256."""
        columns = [results_table.c[f.name] for f in fields(StoredResult)]
        found: dict[str, StoredResult] = {}
        with database_errors(), reader(self.engine).connect() as conn:
            for chunk in chunks(sorted(set(content_sha256s)), CHUNK):
                query = select(*columns).where(
                    results_table.c.model_sha256 == model_sha256, results_table.c.content_sha256.in_(chunk)
                )
                for row in conn.execute(query):
                    found[row.content_sha256] = StoredResult(**row._asdict())
        return found

    def reported_by_other_models(self, content_sha256s: Iterable[str], model_sha256: str) -> dict[str, str]:
        """For each of these contents that another model's result has a structured report
        queued for (outbox kind ``sr``), that model's SHA-256 (the latest such result's): the
        report a new result's report replaces."""
        r, o = results_table.c, outbox_table.c
        found: dict[str, str] = {}
        with database_errors(), reader(self.engine).connect() as conn:
            for chunk in chunks(sorted(set(content_sha256s)), CHUNK):
                query = (
                    select(r.content_sha256, r.model_sha256)
                    .join(outbox_table, o.result_id == r.id)
                    .where(r.content_sha256.in_(chunk), r.model_sha256 != model_sha256, o.kind == "sr")
                    .order_by(r.finished_at, r.id)
                )
                for row in conn.execute(query):
                    found[row.content_sha256] = row.model_sha256  # the latest wins
        return found

    def plans_of(self, event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, FilingPlan]:
        """Committed audit rows with a destination, by ``event_id``.

        After a crash between the commit and the move, this is how a worker finds the files
        whose outcome is recorded and only the move is left.
        """
        found: dict[uuid.UUID, FilingPlan] = {}
        a = audit_events.c
        with database_errors(), reader(self.engine).connect() as conn:
            for chunk in chunks(sorted(set(event_ids)), CHUNK):
                columns = (a.destination_path, a.destination_path_hex, a.outcome, a.reason, a.content_sha256)
                query = select(a.event_id, *columns).where(
                    a.event_id.in_(chunk), a.destination_path.is_not(None)
                )
                for row in conn.execute(query):
                    found[row.event_id] = FilingPlan(
                        from_stored(row.destination_path, row.destination_path_hex),
                        row.outcome,
                        row.reason,
                        row.content_sha256,
                    )
        return found

    def set_destination(self, event_id: uuid.UUID, destination_path: str) -> None:
        """Correct where a file went (its planned name was taken by the time it moved)."""
        with database_errors(), self.engine.begin() as conn:
            conn.execute(
                audit_events.update()
                .where(audit_events.c.event_id == event_id)
                .values(
                    destination_path=as_text(destination_path),
                    destination_path_hex=as_hex(destination_path),
                )
            )

    def refile(self, event_id: uuid.UUID, *, reason: str, destination_path: str) -> None:
        """A committed file that could not be filed as planned: it failed, for ``reason``, and
        goes to ``destination_path`` instead."""
        with database_errors(), self.engine.begin() as conn:
            conn.execute(
                audit_events.update()
                .where(audit_events.c.event_id == event_id)
                .values(
                    outcome="failed",
                    reason=as_text(reason),
                    destination_path=as_text(destination_path),
                    destination_path_hex=as_hex(destination_path),
                )
            )

    def _result_row(self, record: ResultRecord) -> dict[str, Any]:
        row = _columns(record)
        row["positive"] = record.positive
        if not self.store_patient_ids:
            row["accession_number"] = row["patient_id"] = None
        return row

    @staticmethod
    def _audit_row(record: AuditRecord, result_id: int | None) -> dict[str, Any]:
        destination = record.destination_path
        return {
            **_columns(record),
            "source_path": as_text(record.source_path),
            "source_path_hex": as_hex(record.source_path),
            "destination_path": None if destination is None else as_text(destination),
            "destination_path_hex": None if destination is None else as_hex(destination),
            "reason": None if record.reason is None else as_text(record.reason),
            "result_id": result_id,
        }

    @staticmethod
    def _scanned_row(record: ScannedRecord, ids: dict[tuple[str, str], int]) -> dict[str, Any]:
        key = (record.model_sha256, record.content_sha256 or "")
        return {
            **_columns(record),
            "path": as_text(record.path),
            "path_hex": as_hex(record.path) or "",
            "result_id": ids.get(key),
        }


def _enqueue(conn: Connection, items: Sequence[OutboxItem]) -> None:
    """Queue PACS objects in this transaction, each linked to its result by ``result_key``."""
    ids = _result_ids(conn, {i.result_key for i in items if i.result_key and i.result_id is None})
    enqueue(
        conn,
        [
            replace(i, result_id=ids.get(i.result_key)) if i.result_key and i.result_id is None else i
            for i in items
        ],
    )


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of at most ``size`` (itertools.batched arrives with Python 3.12)."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _columns(record: Any) -> dict[str, Any]:
    """A record's fields as a row, shallowly (``dataclasses.asdict`` deep-copies every value,
    which was a third of a batch commit's time)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _result_key(audit: AuditRecord) -> tuple[str, str] | None:
    if audit.model_sha256 and audit.content_sha256:
        return (audit.model_sha256, audit.content_sha256)
    return None


def _insert_ignoring_duplicates(conn: Connection, table: Table, keys: list[str]) -> Insert:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=keys)


def _upsert(conn: Connection, table: Table, keys: list[str]) -> Insert:
    """INSERT, or on a key already there, UPDATE every other column to the new values."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table)
    others = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    return stmt.on_conflict_do_update(index_elements=keys, set_=others)


def _result_ids(conn: Connection, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The ids of the results for these (model_sha256, content_sha256) pairs that exist."""
    ids: dict[tuple[str, str], int] = {}
    key = tuple_(results_table.c.model_sha256, results_table.c.content_sha256)
    for chunk in chunks(sorted(pairs), CHUNK):
        query = select(
            results_table.c.id, results_table.c.model_sha256, results_table.c.content_sha256
        ).where(key.in_(chunk))
        for row in conn.execute(query):
            ids[(row.model_sha256, row.content_sha256)] = row.id
    return ids
