"""The results database's tables: one row per screened image content and model, one per file handled.

Results are immutable facts keyed by what was screened (the content's SHA-256) and by what
screened it (the model file's SHA-256), so the model's name and version sit on each row
rather than in a table of their own: nothing is ever updated, and an analyst needs no join.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from worker.outcome import Outcome

OUTCOMES = tuple(outcome.value for outcome in Outcome)
# Where an outbox row's delivery stands (worker/db/outbox.py).
OUTBOX_STATUSES = ("pending", "delivered", "committed", "failed")
# Where a pulled instance stands, and how a pull run ended (worker/db/pulls.py).
PULL_STATES = ("found", "retrieved", "known", "failed")
PULL_RUN_STATUSES = ("running", "done", "failed")

# Deterministic constraint and index names, so that migrations can name what they drop.
NAMING = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
}

# BIGINT identities on Postgres; SQLite needs INTEGER PRIMARY KEY for its rowid alias.
RowId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")
Sha256 = String(64)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python; ``timestamptz`` on Postgres, ISO-like UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: use a timezone-aware UTC time")
        value = value.astimezone(UTC)
        # SQLite has no time zones: store UTC without an offset, so that text order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        str: String(),
        uuid.UUID: Uuid(),
    }


class Result(Base):
    """One screening result per distinct image content and model."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    content_sha256: Mapped[str] = mapped_column(Sha256)
    model_sha256: Mapped[str] = mapped_column(Sha256)
    model_name: Mapped[str]
    model_version: Mapped[str]
    preprocessing: Mapped[str]
    label: Mapped[str]
    positive_class: Mapped[str]
    # label == positive_class: the image was flagged for a human to look at first.
    positive: Mapped[bool]
    positive_probability: Mapped[float] = mapped_column(Double())
    # Every class's probability, {"NORMAL": 0.03, "PNEUMONIA": 0.97}.
    probabilities: Mapped[dict[str, float]] = mapped_column(Json)
    # NULL: the label is simply the most probable class.
    threshold: Mapped[float | None] = mapped_column(Double())
    device: Mapped[str]
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    inference_ms: Mapped[float] = mapped_column(Double())
    image_format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int]
    height: Mapped[int]
    # DICOM only. Strings from the file are unbounded: a malformed UID must not fail a batch.
    sop_instance_uid: Mapped[str | None]
    study_instance_uid: Mapped[str | None]
    series_instance_uid: Mapped[str | None]
    modality: Mapped[str | None]
    # Stored only when [database] store_patient_ids = true.
    accession_number: Mapped[str | None]
    patient_id: Mapped[str | None]
    # The image gate's score of this image (worker/model/gate.py); NULL: the model has none.
    gate_score: Mapped[float | None] = mapped_column(Double())
    # The site profile (operating point chosen on a site's films) the label was given under.
    site_profile: Mapped[str | None] = mapped_column(String(200))
    # The Grad-CAM overlay written for this image ([explain]); NULL: none was made.
    heatmap_path: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("content_sha256", "model_sha256"),
        CheckConstraint("length(content_sha256) = 64 AND length(model_sha256) = 64", name="sha256"),
        CheckConstraint("width > 0 AND height > 0", name="size"),
        Index(None, "finished_at"),
        Index(None, "positive", "finished_at"),
        Index(None, "study_instance_uid"),
    )


class AuditEvent(Base):
    """One row per file the worker or a scan handled, whatever became of it."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    # Chosen by the worker: retrying a batch whose commit was in doubt cannot log a file twice.
    event_id: Mapped[uuid.UUID]
    at: Mapped[datetime]
    # Paths as text; a name that is not valid UTF-8 has its undecodable bytes written as \xNN
    # here and its exact bytes, in hex, in the *_hex column (NULL for every other name).
    source_path: Mapped[str] = mapped_column(Text)
    source_path_hex: Mapped[str | None] = mapped_column(Text)
    file_size: Mapped[int | None] = mapped_column(BigInteger())
    # NULL when the file could not be read.
    content_sha256: Mapped[str | None] = mapped_column(Sha256)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    destination_path: Mapped[str | None] = mapped_column(Text)
    destination_path_hex: Mapped[str | None] = mapped_column(Text)
    worker_host: Mapped[str]
    worker_id: Mapped[str]
    model_sha256: Mapped[str | None] = mapped_column(Sha256)
    result_id: Mapped[int | None] = mapped_column(RowId, ForeignKey("results.id"))

    __table_args__ = (
        UniqueConstraint("event_id"),
        CheckConstraint("outcome IN ('screened', 'duplicate', 'failed', 'out_of_scope')", name="outcome"),
        CheckConstraint(
            "outcome NOT IN ('failed', 'out_of_scope') OR reason IS NOT NULL", name="failed_has_reason"
        ),
        CheckConstraint("outcome = 'failed' OR content_sha256 IS NOT NULL", name="screened_has_sha256"),
        Index(None, "at"),
        Index(None, "outcome", "at"),
        Index(None, "result_id"),
        Index(None, "content_sha256"),
    )


class ScannedFile(Base):
    """What ``xray-worker scan`` remembers of each archive file a model has handled.

    A file whose size and modification time are those recorded here is skipped without
    being read. Rows are written in the same transaction as the batch's results and audit
    rows, so a scan interrupted at any point resumes exactly where its last commit left off.
    """

    __tablename__ = "scanned_files"

    # The path as the scan found it (absolute, links not resolved), as text; for a name that
    # is not valid UTF-8, its exact bytes in hex in path_hex (see AuditEvent.source_path).
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    model_sha256: Mapped[str] = mapped_column(Sha256, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger())
    mtime_ns: Mapped[int] = mapped_column(BigInteger())
    # NULL when the file could not be read.
    content_sha256: Mapped[str | None] = mapped_column(Sha256)
    outcome: Mapped[str] = mapped_column(String(16))
    result_id: Mapped[int | None] = mapped_column(RowId, ForeignKey("results.id"))
    recorded_at: Mapped[datetime]
    # Empty for a valid UTF-8 name. Part of the key: two names may read the same as text.
    path_hex: Mapped[str] = mapped_column(Text, primary_key=True, server_default="")

    __table_args__ = (
        CheckConstraint("outcome IN ('screened', 'duplicate', 'failed', 'out_of_scope')", name="outcome"),
    )


class OutboxEntry(Base):
    """One DICOM object to deliver to one PACS destination, and where its delivery stands.

    Written in the transaction that stores the result it derives from, so a result never
    exists without its objects queued; ``xray-worker send`` (worker/pacs/sender.py) delivers
    them. ``pending`` until the destination answers a C-STORE with success or a warning, then
    ``delivered``; with storage commitment, ``committed`` once the destination reports it
    holds the object. ``failed`` after ``[pacs] max_attempts``, with ``last_error``.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    created_at: Mapped[datetime]
    # The result the object reports on (NULL: not derived from one result).
    result_id: Mapped[int | None] = mapped_column(RowId, ForeignKey("results.id"))
    # A [[pacs.destinations]] name.
    destination: Mapped[str] = mapped_column(String(64))
    # "sr" (a structured report), "sc" (a secondary capture key image), or another kind.
    kind: Mapped[str] = mapped_column(String(16))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    # The object as a DICOM Part 10 file.
    payload: Mapped[bytes] = mapped_column(LargeBinary())
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer())
    next_attempt_at: Mapped[datetime]
    last_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    committed_at: Mapped[datetime | None]
    # The storage commitment request (N-ACTION) that asked for it; NULL: none pending.
    commitment_transaction_uid: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        # Enqueueing an object again is a no-op: one copy per destination.
        UniqueConstraint("sop_instance_uid", "destination"),
        CheckConstraint("status IN ('pending', 'delivered', 'committed', 'failed')", name="status"),
        CheckConstraint("status <> 'failed' OR last_error IS NOT NULL", name="failed_has_error"),
        CheckConstraint("attempts >= 0", name="attempts"),
        Index(None, "destination", "status", "next_attempt_at"),
        Index(None, "commitment_transaction_uid"),
        Index(None, "result_id"),
    )


class PullRun(Base):
    """One ``xray-worker pull`` run against one PACS: the dates it asked for and what came of it.

    The last date of the runs whose query completed (``queried_at`` set) is the source's
    high-water mark: a run given no dates goes on from there.
    """

    __tablename__ = "pull_runs"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    # A [[pull.sources]] name.
    source: Mapped[str] = mapped_column(String(64))
    # The process: host:pid.
    owner: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime]
    # The study dates asked for; NULL: any date (accession numbers).
    first_date: Mapped[date | None] = mapped_column(Date())
    last_date: Mapped[date | None] = mapped_column(Date())
    # When the query completed and what it found was recorded; NULL: it did not.
    queried_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16))
    found: Mapped[int] = mapped_column(Integer())
    retrieved: Mapped[int] = mapped_column(Integer())
    failed: Mapped[int] = mapped_column(Integer())
    reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("status IN ('running', 'done', 'failed')", name="status"),
        CheckConstraint("status <> 'failed' OR reason IS NOT NULL", name="failed_has_reason"),
        Index(None, "source", "queried_at"),
    )


class PullInstance(Base):
    """One instance a PACS holds that a pull found, and where its retrieval stands.

    ``found`` until it is retrieved into the inbox (``retrieved``), or until a result of the
    model shows it was screened already (``known``: never retrieved); ``failed`` after
    ``[pull] max_attempts``, with its reason. A process retrieving it holds a claim
    (``claimed_by``, until ``claimed_until``): another process takes it over only after that,
    so two pulls on one database split the work, and one killed mid-retrieve loses nothing.
    """

    __tablename__ = "pull_instances"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16))
    # Only for a Patient Root source, which needs it to retrieve; NULL otherwise.
    patient_id: Mapped[str | None] = mapped_column(String(64))
    # The run that found it first.
    run_id: Mapped[int | None] = mapped_column(RowId, ForeignKey("pull_runs.id"))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer())
    reason: Mapped[str | None] = mapped_column(Text)
    found_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    retrieved_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_until: Mapped[datetime | None]

    __table_args__ = (
        # Found again by a later run: the same row.
        UniqueConstraint("source", "sop_instance_uid"),
        CheckConstraint("state IN ('found', 'retrieved', 'known', 'failed')", name="state"),
        CheckConstraint("state <> 'failed' OR reason IS NOT NULL", name="failed_has_reason"),
        CheckConstraint("attempts >= 0", name="attempts"),
        Index(None, "source", "state", "claimed_until"),
        Index(None, "run_id"),
    )


results = Result.__table__
audit_events = AuditEvent.__table__
scanned_files = ScannedFile.__table__
outbox = OutboxEntry.__table__
pull_runs = PullRun.__table__
pull_instances = PullInstance.__table__
