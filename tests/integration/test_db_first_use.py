"""First use: a missing SQLite file is created at head; nothing else is created or upgraded.

``scan``, ``watch`` and ``report`` open the database through ``worker.app.open_database``
(``open_store``). These tests hold it to the rules: a new SQLite file is created at the
newest schema with one log line; an existing database that is behind (or empty) is refused
with the message naming ``xray-worker db upgrade`` and left as it was; PostgreSQL is never
created or migrated. And the empty states guide: ``report`` on an empty database says what
to run, and an empty inbox says, once, where files go.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from db_support import audit, populate, result
from sqlalchemy import Engine, inspect

from worker.app import open_database, open_store
from worker.cli.main import cli
from worker.config import load_settings
from worker.db import migrate
from worker.db.engine import make_engine, sqlite_file
from worker.db.store import Store
from worker.errors import ConfigError
from worker.sources.inbox import Inbox

pytest_plugins = ["db_fixtures"]
HEAD = migrate.head_revision()
OLDER = "0003"  # migrations/versions/0003_report_workers.py, one behind 0004
CREATED = "created the results database"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return migrate.current_revision(engine)
    finally:
        engine.dispose()


def tables(engine: Engine) -> list[str]:
    return sorted(inspect(engine).get_table_names())


def created_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(CREATED)]


# -- a new SQLite file is created --------------------------------------------------------


def test_a_missing_sqlite_file_is_created_at_head_with_one_log_line(tmp_path: Path, caplog):
    database = tmp_path / "new" / "folder" / "results.db"  # its folder does not exist either
    url = f"sqlite:///{database}"
    with caplog.at_level(logging.INFO, logger="worker.app"):
        open_database(url).dispose()
    assert database.is_file() and revision(url) == HEAD
    expected = f"{CREATED} {database} at schema {HEAD}: there was none yet"
    assert created_lines(caplog) == [f"{expected} (if one was expected, check [database] url)"]
    assert [r.levelname for r in caplog.records if r.getMessage().startswith(CREATED)] == ["WARNING"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="worker.app"):
        open_database(url).dispose()  # the second use: checked, not created again
    assert created_lines(caplog) == []


def test_workers_starting_together_create_one_database_and_all_use_it(tmp_path: Path):
    """Two workers' first use at once: the file appears only complete (built aside, linked
    into place), so none of them finds it empty and refuses it, and one says it created it."""
    url = f"sqlite:///{tmp_path / 'var' / 'results.db'}"
    code = (
        "import logging, sys; logging.basicConfig(level=logging.WARNING); "
        "from worker.app import open_database; open_database(sys.argv[1]).dispose()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], errors
    assert "".join(errors).count(CREATED) == 1
    assert revision(url) == HEAD
    assert [p.name for p in (tmp_path / "var").iterdir() if p.name.startswith(".")] == []  # no drafts left


def test_a_file_that_cannot_be_created_is_a_config_error(tmp_path: Path):
    (tmp_path / "not-a-folder").write_text("")
    with pytest.raises(ConfigError, match=r"cannot create the results database .*not-a-folder/results\.db"):
        open_database(f"sqlite:///{tmp_path / 'not-a-folder' / 'results.db'}")


def test_open_store_creates_the_configured_file_and_can_be_told_not_to(tmp_path: Path):
    config = tmp_path / "site.toml"
    config.write_text('[database]\nurl = "sqlite:///var/results.db"\n')
    settings = load_settings(config, environ={})
    with pytest.raises(ConfigError, match=r"no database at .*results\.db: run `xray-worker db upgrade`"):
        open_store(settings, create=False)
    assert not (tmp_path / "var").exists()
    store = open_store(settings)
    store.close()
    assert revision(f"sqlite:///{tmp_path / 'var' / 'results.db'}") == HEAD


def test_report_on_a_missing_file_creates_it_and_says_how_to_screen_the_samples(tmp_path: Path):
    database = tmp_path / "results.db"
    result = run("report", "--db", f"sqlite:///{database}")
    assert result.exit_code == 0, result.output
    assert revision(f"sqlite:///{database}") == HEAD
    assert "Files handled          0" in result.output
    assert "Nothing screened yet. Screen the six sample X-rays into this database" in result.output
    assert "  xray-worker scan " in result.output  # the samples, relative to here or absolute
    assert f"samples/ --db sqlite:///{database}\n  xray-worker report --brief --db" in result.output
    assert "(none)" not in result.output  # no wall of empty tables

    flagged = run("report", "flagged", "--db", f"sqlite:///{tmp_path / 'other.db'}", "--format", "csv")
    assert flagged.exit_code == 0 and flagged.output.startswith("handled_at,positive_probability,")
    assert (tmp_path / "other.db").is_file()


def test_report_json_of_a_new_database_is_only_json(tmp_path: Path):
    result = CliRunner().invoke(cli, ["report", "--db", f"sqlite:///{tmp_path / 'r.db'}", "--format", "json"])
    assert result.exit_code == 0
    assert result.stdout.lstrip().startswith("{") and "Nothing screened yet" not in result.stdout


def test_report_brief_is_the_counts_then_where_the_database_is_and_a_query(store: Store, db_url: str):
    populate(store, datetime.now(UTC))
    brief = run("report", "--brief", "--db", db_url)
    assert brief.exit_code == 0, brief.output
    assert "New results            4   positive 2 (50.0%)" in brief.output
    assert "Results by label:" in brief.output and "Failures by reason" not in brief.output
    if db_url.startswith("sqlite"):
        database = sqlite_file(db_url)
        assert f"The results are in the SQLite file {database}. To look at them:" in brief.output
        assert f"  sqlite3 -readonly -box {database} '" in brief.output
        assert " 'SELECT * FROM report_daily_counts'\n" in brief.output
    else:
        assert "The results are in PostgreSQL, postgresql://" in brief.output
        psql = next(line for line in brief.output.splitlines() if line.startswith("  psql "))
        assert psql.startswith("  psql 'postgresql://postgres@") and psql.endswith(
            " -c 'SELECT * FROM report_daily_counts'"
        )
    assert f"xray-worker report flagged --db {db_url}" in brief.output.replace("'", "")
    full = run("report", "--db", db_url)
    assert "Failures by reason" in full.output and "To look at them" not in full.output


def test_report_on_a_quiet_week_points_to_the_earlier_results(store: Store, db_url: str):
    old = datetime.now(UTC) - timedelta(days=30)
    store.record_batch([result("old", finished_at=old)], [audit("old", at=old)])
    quiet = run("report", "--db", db_url)
    assert quiet.exit_code == 0, quiet.output
    assert (
        "Nothing handled in this window; the database has earlier files: xray-worker report" in quiet.output
    )
    assert "--since all" in quiet.output and "Nothing screened yet" not in quiet.output


# -- what exists is refused, never upgraded ------------------------------------------------


def test_an_existing_database_behind_head_is_refused_and_left_as_it_was(db_url: str, caplog):
    engine = make_engine(db_url, create=True)
    migrate.upgrade(engine, OLDER)
    engine.dispose()
    with pytest.raises(ConfigError) as refused, caplog.at_level(logging.INFO, logger="worker.app"):
        open_database(db_url)
    assert f"at revision {OLDER}, expected {HEAD}: run `xray-worker db upgrade`" in str(refused.value)
    assert revision(db_url) == OLDER and created_lines(caplog) == []

    result = run("report", "--db", db_url)
    assert result.exit_code == 78
    assert f"at revision {OLDER}, expected {HEAD}: run `xray-worker db upgrade`" in result.output
    assert revision(db_url) == OLDER


def test_an_existing_empty_sqlite_file_is_refused_not_migrated(tmp_path: Path):
    database = tmp_path / "results.db"
    database.touch()  # e.g. created by hand, or by an interrupted first use
    url = f"sqlite:///{database}"
    with pytest.raises(ConfigError, match=r"at revision none \(empty\), expected .*xray-worker db upgrade"):
        open_database(url)
    engine = make_engine(url)
    assert tables(engine) == []
    engine.dispose()


@pytest.mark.postgres
def test_postgres_is_never_created_or_migrated(postgres_schema, caplog):
    url = postgres_schema.render_as_string(hide_password=False)  # an empty schema of its own
    with pytest.raises(ConfigError) as refused, caplog.at_level(logging.INFO, logger="worker.app"):
        open_database(url)
    assert f"at revision none (empty), expected {HEAD}: run `xray-worker db upgrade`" in str(refused.value)
    assert created_lines(caplog) == []
    for command in (("report",), ("report", "flagged")):
        result = run(*command, "--db", url)
        assert result.exit_code == 78, result.output
        assert "run `xray-worker db upgrade`" in result.output
    engine = make_engine(url)
    try:
        assert tables(engine) == [] and migrate.current_revision(engine) is None
    finally:
        engine.dispose()


# -- the empty inbox says where files go, once ---------------------------------------------


EMPTY = "is empty: copy or move X-rays (PNG, JPEG, DICOM) into it to screen them"


def inbox_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if EMPTY in r.getMessage()]


def test_an_empty_inbox_says_where_to_drop_files_once(tmp_path: Path, caplog):
    now = [0.0]
    inbox = Inbox(tmp_path, stability_seconds=1.0, rescan_interval=0, clock=lambda: now[0])
    (tmp_path / "copying.part").write_bytes(b"x")  # ignored names and hidden files: still empty
    (tmp_path / ".hidden").write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="worker.sources.inbox"):
        assert inbox.take(10) == []
        now[0] += 5
        assert inbox.take(10) == []  # every take rescans here (rescan_interval=0): still one line
        (tmp_path / "a.jpeg").write_bytes(b"x")
        inbox.take(10)
        now[0] += 5
        assert inbox.take(10) == [tmp_path / "a.jpeg"]
    assert inbox_lines(caplog) == [f"the inbox {tmp_path} {EMPTY}"]


def test_an_inbox_with_files_says_nothing_of_the_kind(tmp_path: Path, caplog):
    (tmp_path / "a.jpeg").write_bytes(b"x")
    inbox = Inbox(tmp_path, stability_seconds=0, rescan_interval=0)
    with caplog.at_level(logging.INFO, logger="worker.sources.inbox"):
        inbox.take(10)
        (tmp_path / "a.jpeg").unlink()
        inbox.take(10)  # empty now, after work: not the first look, nothing said
    assert inbox_lines(caplog) == []
