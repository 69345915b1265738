"""Alembic environment: run on the connection worker.db.migrate hands over, else on the settings' URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from worker.db.schema import Base


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite's ALTER TABLE is limited
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported: run `xray-worker db upgrade`")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    # Plain `alembic` (e.g. `alembic revision --autogenerate`): the URL comes from the settings.
    from worker.config import load_settings
    from worker.db.engine import make_engine

    engine = make_engine(load_settings().database.url, create=True)
    try:
        with engine.begin() as conn:
            run(conn)
    finally:
        engine.dispose()


main()
