"""Which database errors are worth retrying.

Transient: the server is restarting or unreachable, the connection dropped, SQLite is
locked by another writer, a serialization failure or deadlock. Retrying the same batch
later can succeed, so these become ``TransientError``. Anything else (a constraint
violation, a missing table, bad SQL) is a bug or a schema problem that no retry fixes:
it propagates unchanged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import exc as sa_exc

from worker.errors import TransientError

# SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html) worth a retry.
TRANSIENT_SQLSTATE_CLASSES = ("08",)  # connection exception
TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "53300",  # too_many_connections
        "55P03",  # lock_not_available
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, shutting down, in recovery)
        "25006",  # read_only_sql_transaction: a fail-over left us on a standby for a while
    }
)
# SQLite primary result codes worth a retry.
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN = 5, 6, 10, 13, 14
TRANSIENT_SQLITE_CODES = frozenset({SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN})
TRANSIENT_SQLITE_MESSAGES = ("database is locked", "database table is locked", "disk i/o error")


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same work later may succeed."""
    if isinstance(exc, (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.DataError)):
        return False
    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return True  # TimeoutError: no pooled connection became free in time
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        return _driver_error_is_transient(exc.orig)
    return _driver_error_is_transient(exc)


def _driver_error_is_transient(orig: BaseException | None) -> bool:
    if isinstance(orig, psycopg.Error):
        state = orig.sqlstate
        if state is None:
            # Raised by libpq itself: connection refused, server closed the connection, ...
            return isinstance(orig, (psycopg.OperationalError, psycopg.InterfaceError))
        return state in TRANSIENT_SQLSTATES or state.startswith(TRANSIENT_SQLSTATE_CLASSES)
    if isinstance(orig, sqlite3.OperationalError):
        code = getattr(orig, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in TRANSIENT_SQLITE_CODES
        return str(orig).lower().startswith(TRANSIENT_SQLITE_MESSAGES)
    return False


def describe(exc: BaseException) -> str:
    """A one-line reason without the SQL statement or its parameters."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    text = " ".join(str(orig).split()) or type(orig).__name__
    return f"{type(orig).__name__}: {text}"


@contextmanager
def database_errors() -> Iterator[None]:
    """Turn transient database failures into ``TransientError``; let everything else through."""
    try:
        yield
    except (sa_exc.SQLAlchemyError, psycopg.Error, sqlite3.Error) as exc:
        if is_transient(exc):
            raise TransientError(f"database unavailable: {describe(exc)}") from exc
        raise
