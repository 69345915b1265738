"""Alembic, configured from code: works from any directory, with the URL from the settings.

The migration scripts live in ``migrations/`` at the project root; the wheel carries them
as ``worker/db/migrations/`` (``worker.config.shipped_path``), so an installed worker finds
them with no checkout around. The worker refuses a database that is not at the newest
revision (``require_head``), naming the command that fixes it.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from worker.config import shipped_path
from worker.db.engine import reader, safe_url
from worker.errors import ConfigError

MIGRATIONS = shipped_path("db/migrations", "migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for ``migrations/``; env.py runs on ``connection`` when one is given."""
    if not (MIGRATIONS / "env.py").is_file():
        raise ConfigError(
            f"the database migrations are missing: no {MIGRATIONS / 'env.py'} "
            "(a broken install of xray-screen: reinstall it)"
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:  # pragma: no cover - a development mistake, caught by the tests
        raise ConfigError(f"migrations/ has {len(heads)} heads ({', '.join(heads)}): merge them")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The database's revision; None for an empty database."""
    with reader(engine).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)


def require_head(engine: Engine) -> None:
    """Raise ``ConfigError`` unless the database is at the newest revision."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    where = safe_url(engine.url)
    if current is not None and current not in _known_revisions():
        raise ConfigError(
            f"database {where} at revision {current}, which this version of xray-screen does not know "
            f"(expected {head}): it was upgraded by a newer release"
        )
    raise ConfigError(
        f"database {where} at revision {current or 'none (empty)'}, expected {head}: "
        "run `xray-worker db upgrade`"
    )


def _known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
