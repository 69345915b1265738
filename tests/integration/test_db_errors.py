"""Which database failures the worker may retry: made-up errors, then real ones from both servers."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from db_support import audit, result
from sqlalchemy import Engine, event, select, text
from sqlalchemy import exc as sa_exc

from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.errors import database_errors, describe, is_transient
from worker.db.store import Store
from worker.errors import TransientError

pytest_plugins = ["db_fixtures"]


def sqlite_error(message: str, code: int | None) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    if code is not None:
        error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


def wrapped(orig: BaseException, cls: type[sa_exc.DBAPIError] = sa_exc.OperationalError) -> sa_exc.DBAPIError:
    return cls("INSERT INTO results ...", {"patient_id": "PAT1"}, orig)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (wrapped(sqlite_error("database is locked", 5)), True),
        (wrapped(sqlite_error("database table is locked", 6)), True),
        (wrapped(sqlite_error("database is locked", None)), True),
        (wrapped(sqlite_error("disk I/O error", 10)), True),
        (wrapped(sqlite_error("no such table: results", 1)), False),
        (wrapped(psycopg.OperationalError("connection failed: Connection refused")), True),
        (wrapped(psycopg.InterfaceError("the connection is closed"), sa_exc.InterfaceError), True),
        (wrapped(psycopg.errors.AdminShutdown("terminating connection")), True),
        (wrapped(psycopg.errors.CrashShutdown("crash")), True),
        (wrapped(psycopg.errors.CannotConnectNow("the database system is starting up")), True),
        (wrapped(psycopg.errors.ConnectionFailure("connection failure")), True),
        (wrapped(psycopg.errors.SerializationFailure("could not serialize")), True),
        (wrapped(psycopg.errors.DeadlockDetected("deadlock detected")), True),
        (wrapped(psycopg.errors.TooManyConnections("too many clients")), True),
        (wrapped(psycopg.errors.QueryCanceled("canceling statement")), False),
        (wrapped(psycopg.errors.UniqueViolation("duplicate key"), sa_exc.IntegrityError), False),
        (wrapped(psycopg.errors.UndefinedTable("relation does not exist"), sa_exc.ProgrammingError), False),
        (wrapped(sqlite3.IntegrityError("UNIQUE constraint failed"), sa_exc.IntegrityError), False),
        (sa_exc.TimeoutError("QueuePool limit reached"), True),
        (sa_exc.DisconnectionError("connection invalidated"), True),
        (ValueError("not a database error"), False),
    ],
    ids=lambda value: type(getattr(value, "orig", value)).__name__ if isinstance(value, Exception) else None,
)
def test_transient_or_not(error: BaseException, transient: bool):
    assert is_transient(error) is transient


def test_the_reason_leaves_out_the_statement_and_its_parameters():
    reason = describe(wrapped(psycopg.errors.AdminShutdown("terminating connection\ndue to admin")))
    assert reason == "AdminShutdown: terminating connection due to admin"


def test_a_locked_sqlite_database_is_transient(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    holder = make_engine(url, create=True)
    migrate.upgrade(holder)
    impatient = make_engine(url)
    event.listen(impatient, "connect", lambda conn, _record: conn.execute("PRAGMA busy_timeout = 0"))
    try:
        # BEGIN IMMEDIATE: another writer holds the lock
        with holder.begin(), pytest.raises(TransientError, match="database is locked"):
            Store(impatient).record_batch([result("a")], [audit("a")])
    finally:
        holder.dispose()
        impatient.dispose()


def test_errors_that_no_retry_fixes_pass_through_unchanged(engine: Engine):
    with pytest.raises(sa_exc.DBAPIError) as caught, database_errors(), engine.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert not isinstance(caught.value, TransientError) and not is_transient(caught.value)


@pytest.mark.postgres
def test_a_connection_terminated_by_the_server_is_transient(postgres_database):
    engine = make_engine(postgres_database)
    try:
        with engine.connect() as victim, engine.connect() as admin:
            pid = victim.execute(select(text("pg_backend_pid()"))).scalar_one()
            admin.execute(select(text(f"pg_terminate_backend({int(pid)})")))
            admin.commit()
            with (
                pytest.raises(TransientError, match=r"AdminShutdown|terminating connection|closed"),
                database_errors(),
            ):
                victim.execute(select(text("1")))
        with engine.connect() as fresh:  # the pool hands out a working connection again
            assert fresh.execute(select(text("1"))).scalar_one() == 1
    finally:
        engine.dispose()


def test_a_server_that_is_not_there_is_transient_and_the_password_stays_out():
    engine = make_engine("postgresql+psycopg://xray:s3cret@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(TransientError) as caught, database_errors(), engine.connect():
            pass
    finally:
        engine.dispose()
    assert "s3cret" not in str(caught.value)
    assert "refused" in str(caught.value).lower() or "connect" in str(caught.value).lower()
