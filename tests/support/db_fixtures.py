"""Fixtures for the results-database tests: every test runs on SQLite, and on Postgres when asked.

Postgres runs on ``XRAY_SCREEN_TEST_POSTGRES_URL`` (default: 127.0.0.1:5432/test, which
``scripts/test`` starts), and a test that needs it fails when it does not answer: the
session creates its own database ``xray_test_<random>`` on that server and drops it at
the end, and each test gets a fresh schema in it, so parallel runs never collide.
Test modules load this file with ``pytest_plugins = ["db_fixtures"]``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from db_support import ENGINES, POSTGRES_URL, require_postgres
from sqlalchemy import URL, Engine, create_engine, make_url

from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.store import Store


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[URL]:
    """A database of its own on the test server, dropped at the end of the session."""
    require_postgres()
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"xray_test_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_URL).set(database=name)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def postgres_schema(postgres_database: URL) -> URL:
    """A fresh schema on the test server: this test's tables, whatever else runs."""
    return fresh_schema(postgres_database)


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database: a SQLite file not yet created, or a fresh Postgres schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return fresh_schema(request.getfixturevalue("postgres_database")).render_as_string(hide_password=False)


def fresh_schema(base: URL) -> URL:
    """``base`` with a new, empty schema of its own first on the search path."""
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    admin.dispose()
    return base.update_query_dict({"options": f"-csearch_path={schema}"})


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A database built by the migrations, at head."""
    engine = make_engine(db_url, create=True)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)
