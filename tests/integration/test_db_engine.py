"""Opening the database: SQLite pragmas and locking, Postgres pooling, URLs and settings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError

from worker.config import DEFAULT_DATABASE, load_settings
from worker.db import engine as engine_module
from worker.db.engine import filesystem_type, make_engine, parse_url, reader, safe_url
from worker.errors import ConfigError

pytest_plugins = ["db_fixtures"]


def sqlite_file(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'results.db'}", create=True)
    engine.connect().close()  # the file exists from the first connection on
    return engine


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout_and_foreign_keys(tmp_path: Path):
    engine = sqlite_file(tmp_path)
    with engine.connect() as conn:
        pragma = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "busy_timeout", "foreign_keys")
        }
    engine.dispose()
    assert pragma == {"journal_mode": "wal", "busy_timeout": 30_000, "foreign_keys": 1}
    assert (tmp_path / "sub" / "results.db").exists()


def test_sqlite_writers_take_the_write_lock_up_front_and_readers_do_not(tmp_path: Path):
    engine = sqlite_file(tmp_path)
    other = make_engine(f"sqlite:///{tmp_path / 'sub' / 'results.db'}")
    event.listen(other, "connect", lambda conn, _record: conn.execute("PRAGMA busy_timeout = 0"))
    try:
        with engine.begin():  # no statement yet: BEGIN IMMEDIATE already holds the lock
            with pytest.raises(OperationalError, match="database is locked"), other.begin():
                pass
            with reader(other).begin() as conn:  # a report still reads
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
        other.dispose()


def test_a_missing_sqlite_file_is_created_only_by_upgrade(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"no database at .*missing\.db: run `xray-worker db upgrade`"):
        make_engine(f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()


def test_in_memory_sqlite_is_refused():
    with pytest.raises(ConfigError, match="must be a file"):
        make_engine("sqlite://")


def test_sqlite_on_a_network_file_system_is_warned_about(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setattr(engine_module, "filesystem_type", lambda _path: "nfs4")
    with caplog.at_level(logging.WARNING, logger="worker.db.engine"):
        make_engine(f"sqlite:///{tmp_path / 'results.db'}", create=True).dispose()
    assert "network file system (nfs4)" in caplog.text and "PostgreSQL" in caplog.text


def test_filesystem_type_picks_the_innermost_mount():
    mounts = (
        "/dev/sda1 / ext4 rw 0 0\n"
        "server:/export /srv/share nfs4 rw 0 0\n"
        "//nas/x /srv/share\\040two cifs rw 0 0\n"
    )
    assert filesystem_type(Path("/srv/share/db/results.db"), mounts) == "nfs4"
    assert filesystem_type(Path("/srv/share two/results.db"), mounts) == "cifs"
    assert filesystem_type(Path("/srv/shared/results.db"), mounts) == "ext4"


def test_postgres_urls_use_psycopg_3_and_a_pool_for_a_daemon():
    assert parse_url("postgresql://xray@db/screen").drivername == "postgresql+psycopg"
    engine = make_engine("postgresql://xray:s3cret@db/screen")  # nothing connects yet
    assert engine.pool._pre_ping and engine.pool._recycle == 1800
    assert engine.dialect.driver == "psycopg"
    engine.dispose()


@pytest.mark.parametrize(
    "url", ["mysql://xray:s3cret@db/screen", "postgresql+psycopg2://xray:s3cret@db/x", "nonsense"]
)
def test_unsupported_urls_are_refused_without_showing_the_password(url: str):
    with pytest.raises(ConfigError) as caught:
        make_engine(url)
    assert "s3cret" not in str(caught.value)


def test_safe_url_masks_the_password():
    assert safe_url("postgresql+psycopg://xray:s3cret@db/screen") == "postgresql+psycopg://xray:***@db/screen"


def test_the_default_database_is_a_sqlite_file_in_the_project(tmp_path: Path):
    settings = load_settings(environ={})
    assert settings.database.url == f"sqlite:///{DEFAULT_DATABASE}"
    assert settings.database.store_patient_ids is False


def test_a_relative_sqlite_file_in_a_config_file_is_beside_that_file(tmp_path: Path):
    config = tmp_path / "etc" / "site.toml"
    config.parent.mkdir()
    config.write_text('[database]\nurl = "sqlite:///var/results.db"\nstore_patient_ids = true\n')
    settings = load_settings(config, environ={})
    assert settings.database.url == f"sqlite:///{tmp_path / 'etc' / 'var' / 'results.db'}"
    assert settings.database.store_patient_ids is True
    config.write_text('[database]\nurl = "sqlite:////abs/results.db?timeout=5"\n')
    assert load_settings(config, environ={}).database.url == "sqlite:////abs/results.db?timeout=5"


def test_the_environment_and_the_command_line_override_the_file(tmp_path: Path):
    config = tmp_path / "site.toml"
    config.write_text('[database]\nurl = "sqlite:///a.db"\n')
    env = {"XRAY_SCREEN_DATABASE_URL": "postgresql+psycopg://xray@db/screen"}
    assert load_settings(config, environ=env).database.url == "postgresql+psycopg://xray@db/screen"
    flag = {"database.url": "sqlite:////tmp/b.db"}
    assert load_settings(config, environ=env, overrides=flag).database.url == "sqlite:////tmp/b.db"
