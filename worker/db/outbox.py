"""The PACS outbox: DICOM objects waiting for a destination, and how each delivery went.

Part of the database layer, as the results are: the table is in ``schema.py``, and the results
store (``store.py``) queues objects with their results here, so the PACS code
(``worker/pacs/``) builds on this module and the database layer imports nothing of it.

Every function takes a SQLAlchemy ``Connection`` and runs inside the caller's transaction,
so ``enqueue`` can share the transaction that stores the results the objects report on
(``Store.record_batch(..., outbox=...)``): a result is never committed without its objects,
nor an object without its result. The sender (``worker/pacs/sender.py``) reads what is
``due`` and records each answer with the ``mark_*`` functions, each a single UPDATE.

A row's life: ``pending`` -> ``delivered`` (the destination answered the C-STORE with success
or a warning) -> ``committed`` (with storage commitment: the destination reported it keeps
the object). A failed attempt leaves it ``pending`` with ``attempts`` + 1 and a later
``next_attempt_at``; after ``max_attempts`` it is ``failed``, with the last reason, until an
operator queues it again (``requeue``). Nothing here deletes a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, case, func, literal, select, type_coerce, update
from sqlalchemy.dialects import postgresql, sqlite

from worker.db.schema import UTCDateTime, outbox

# Keeps IN (...) lists well under every backend's parameter limit.
CHUNK = 500
ERROR_CHARS = 2000


@dataclass(frozen=True)
class OutboxItem:
    """An object to queue for one destination: its Part 10 bytes and the UIDs that name it."""

    destination: str
    kind: str  # "sr", "sc", or another kind of object
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str | None
    payload: bytes
    result_id: int | None = None
    # (model_sha256, content_sha256) of a result written in the same transaction, whose id
    # is not known yet: record_batch resolves it.
    result_key: tuple[str, str] | None = None


@dataclass(frozen=True)
class Due:
    """A pending row, as the sender needs it."""

    id: int
    destination: str
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    payload: bytes
    attempts: int


@dataclass(frozen=True)
class Backlog:
    """What one destination still has to take."""

    destination: str
    pending: int
    due: int
    awaiting_commitment: int
    failed: int
    oldest_pending: datetime | None


def utcnow() -> datetime:
    return datetime.now(UTC)


def enqueue(conn: Connection, items: Iterable[OutboxItem], *, now: datetime | None = None) -> int:
    """Queue ``items``, due at once; an object already queued for that destination is left as
    it is. Returns how many rows were added."""
    now = now or utcnow()
    rows = [
        {
            "created_at": now,
            "result_id": item.result_id,
            "destination": item.destination,
            "kind": item.kind,
            "sop_class_uid": item.sop_class_uid,
            "sop_instance_uid": item.sop_instance_uid,
            "study_instance_uid": item.study_instance_uid,
            "payload": item.payload,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
        }
        for item in {(i.sop_instance_uid, i.destination): i for i in items}.values()
    ]
    return insert_new(conn, outbox, rows, ["sop_instance_uid", "destination"])


def insert_new(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> int:
    """Insert ``rows`` into ``table``, leaving alone each one whose ``keys`` (a unique
    constraint) a row already holds. Returns how many were added."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    added = 0
    for start in range(0, len(rows), CHUNK):
        stmt = dialect.insert(table).on_conflict_do_nothing(index_elements=list(keys))
        added += len(conn.execute(stmt.returning(table.c.id), rows[start : start + CHUNK]).all())
    return added


def due(conn: Connection, destination: str, limit: int, now: datetime | None = None) -> list[Due]:
    """Up to ``limit`` pending rows of ``destination`` whose next attempt is due, oldest first."""
    o = outbox.c
    query = (
        select(o.id, o.destination, o.kind, o.sop_class_uid, o.sop_instance_uid, o.payload, o.attempts)
        .where(o.destination == destination, o.status == "pending", o.next_attempt_at <= (now or utcnow()))
        .order_by(o.next_attempt_at, o.id)
        .limit(limit)
    )
    return [Due(**row._asdict()) for row in conn.execute(query)]


def mark_delivered(
    conn: Connection, ids: Sequence[int], *, now: datetime | None = None, transaction_uid: str | None = None
) -> int:
    """The destination answered success (or a warning) for these rows; with ``transaction_uid``
    they now await its storage commitment report."""
    now = now or utcnow()
    return _update(
        conn,
        ids,
        status="pending",
        values={
            "status": "delivered",
            "attempts": outbox.c.attempts + 1,
            "last_attempt_at": now,
            "delivered_at": now,
            "last_error": None,
            "commitment_transaction_uid": transaction_uid,
        },
    )


def mark_retry(
    conn: Connection,
    errors: Mapping[int, str],
    *,
    delay: float,
    max_attempts: int,
    now: datetime | None = None,
) -> int:
    """A failed attempt for each row of ``errors`` (id -> reason): tried again ``delay`` seconds
    from now, or ``failed`` once this was attempt number ``max_attempts``."""
    now = now or utcnow()
    gives_up = outbox.c.attempts + 1 >= max_attempts
    status = case((gives_up, literal("failed")), else_=literal("pending"))
    return _failed_attempt(conn, errors, now, status, next_attempt_at=now + timedelta(seconds=delay))


def mark_failed(conn: Connection, errors: Mapping[int, str], *, now: datetime | None = None) -> int:
    """Give up on these pending rows now, with their reasons (no retry can succeed)."""
    return _failed_attempt(conn, errors, now or utcnow(), "failed")


def _failed_attempt(
    conn: Connection, errors: Mapping[int, str], now: datetime, status: Any, **more: Any
) -> int:
    """One more attempt, failed, on each pending row of ``errors`` (id -> reason): its new
    ``status``, its reason, and ``more`` columns."""
    changed = 0
    for reason, ids in _by_reason(errors).items():
        values = {"status": status, "attempts": outbox.c.attempts + 1, "last_attempt_at": now}
        changed += _update(conn, ids, status="pending", values={**values, "last_error": reason, **more})
    return changed


def mark_committed(
    conn: Connection,
    destination: str,
    transaction_uid: str,
    committed: Iterable[str],
    failed: Mapping[str, str] | None = None,
    *,
    delay: float = 0.0,
    now: datetime | None = None,
) -> tuple[int, int]:
    """A storage commitment report for ``transaction_uid``: the SOP Instance UIDs in
    ``committed`` are ``committed``; those in ``failed`` (UID -> reason) go back to ``pending``,
    due in ``delay`` seconds, to be sent and committed again. Only rows still awaiting this
    transaction change. Returns (committed, sent back)."""
    now = now or utcnow()
    o = outbox.c
    awaiting = (
        o.destination == destination,
        o.status == "delivered",
        o.commitment_transaction_uid == transaction_uid,
    )
    n_committed = 0
    uids = sorted(set(committed))
    for start in range(0, len(uids), CHUNK):
        stmt = (
            update(outbox)
            .where(*awaiting, o.sop_instance_uid.in_(uids[start : start + CHUNK]))
            .values(status="committed", committed_at=now)
        )
        n_committed += conn.execute(stmt).rowcount
    n_back = 0
    for reason, failed_uids in _by_reason(failed or {}).items():
        for start in range(0, len(failed_uids), CHUNK):
            stmt = (
                update(outbox)
                .where(*awaiting, o.sop_instance_uid.in_(failed_uids[start : start + CHUNK]))
                .values(
                    status="pending",
                    commitment_transaction_uid=None,
                    last_error=reason,
                    next_attempt_at=now + timedelta(seconds=delay),
                )
            )
            n_back += conn.execute(stmt).rowcount
    return n_committed, n_back


def expire_commitments(conn: Connection, destination: str, older_than: datetime) -> int:
    """Rows delivered before ``older_than`` whose commitment report never came: pending again."""
    o = outbox.c
    stmt = (
        update(outbox)
        .where(
            o.destination == destination,
            o.status == "delivered",
            o.commitment_transaction_uid.is_not(None),
            o.delivered_at < older_than,
        )
        .values(status="pending", commitment_transaction_uid=None, last_error="no storage commitment report")
    )
    return conn.execute(stmt).rowcount


def requeue(conn: Connection, destination: str | None = None, *, now: datetime | None = None) -> int:
    """Failed rows (of one destination, or all) pending again, due now, with their attempts reset."""
    o = outbox.c
    stmt = update(outbox).where(o.status == "failed")
    if destination is not None:
        stmt = stmt.where(o.destination == destination)
    return conn.execute(stmt.values(status="pending", attempts=0, next_attempt_at=now or utcnow())).rowcount


def backlog(conn: Connection, now: datetime | None = None) -> list[Backlog]:
    """Per destination: rows pending (and due now), awaiting commitment, failed; oldest pending."""
    o = outbox.c
    now = now or utcnow()

    def count(condition: object) -> object:
        return func.sum(case((condition, 1), else_=0))

    query = (
        select(
            o.destination,
            count(o.status == "pending"),
            count((o.status == "pending") & (o.next_attempt_at <= now)),
            count((o.status == "delivered") & o.commitment_transaction_uid.is_not(None)),
            count(o.status == "failed"),
            type_coerce(func.min(case((o.status == "pending", o.created_at))), UTCDateTime()),
        )
        .where(o.status != "committed")
        .group_by(o.destination)
        .order_by(o.destination)
    )
    rows = conn.execute(query).all()
    return [
        Backlog(name, int(p or 0), int(d or 0), int(a or 0), int(f or 0), oldest)
        for name, p, d, a, f, oldest in rows
    ]


def _update(conn: Connection, ids: Sequence[int], *, status: str, values: dict[str, object]) -> int:
    """UPDATE the rows of ``ids`` still in ``status`` (a row another sender already settled
    is left alone)."""
    o = outbox.c
    changed = 0
    ids = sorted(set(ids))
    for start in range(0, len(ids), CHUNK):
        stmt = update(outbox).where(o.id.in_(ids[start : start + CHUNK]), o.status == status).values(**values)
        changed += conn.execute(stmt).rowcount
    return changed


def _by_reason(errors: Mapping[object, str]) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for key, reason in errors.items():
        grouped.setdefault((reason or "unknown error")[:ERROR_CHARS], []).append(key)
    return grouped
