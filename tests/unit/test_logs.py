"""The worker's logging (``worker.logs.configure``): libraries that talk about themselves at
INFO (Alembic, at each schema check) stay out of a daemon's log unless asked for with DEBUG."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine

from worker import logs
from worker.db import migrate


@pytest.fixture
def restored() -> Iterator[None]:
    """The logging configuration as it was before the test."""
    root = logging.getLogger()
    saved = root.level, list(root.handlers), {"alembic": logging.getLogger("alembic").level}
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def alembic_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What a schema check (``require_head``'s first step) logs from Alembic at INFO."""
    engine = create_engine("sqlite://")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert migrate.current_revision(engine) is None
    engine.dispose()
    return [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]


def test_a_schema_check_logs_nothing_from_alembic_at_info(restored: None, caplog: pytest.LogCaptureFixture):
    logs.configure("INFO")
    assert alembic_lines(caplog) == []
    logs.configure("DEBUG")
    assert "Context impl SQLiteImpl." in alembic_lines(caplog)
