"""The migrations build exactly the models' schema, on SQLite and Postgres, and undo it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from db_support import audit, populate, result, sha
from sqlalchemy import Engine, func, inspect, literal_column, select, table, text

from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.schema import Base
from worker.db.store import Store
from worker.errors import ConfigError

pytest_plugins = ["db_fixtures"]

VIEWS = {
    "report_daily_counts",
    "report_flagged",
    "report_failures",
    "report_hourly_throughput",
    "report_models",
    "report_workers",
    "report_out_of_scope",
    "report_studies",
}


def test_the_migrated_database_matches_the_models_and_downgrades_to_nothing(db_url: str):
    engine = make_engine(db_url, create=True)
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        schema = inspect(engine)
        assert set(schema.get_table_names()) == {
            "alembic_version",
            "results",
            "audit_events",
            "scanned_files",
            "outbox",
            "pull_runs",
            "pull_instances",
        }
        assert set(schema.get_view_names()) == VIEWS
        with engine.connect() as conn:  # every view runs on this backend
            for view in VIEWS:
                conn.execute(select(literal_column("*")).select_from(table(view))).all()

        migrate.downgrade(engine, "base")
        schema = inspect(engine)
        assert set(schema.get_table_names()) <= {"alembic_version"} and schema.get_view_names() == []
        assert migrate.current_revision(engine) is None
    finally:
        engine.dispose()


def test_downgrading_0003_drops_only_the_worker_view_and_keeps_the_rows(store: Store):
    populate(store, datetime.now(UTC))
    migrate.downgrade(store.engine, "0002")
    assert "report_workers" not in inspect(store.engine).get_view_names()
    assert VIEWS - set(inspect(store.engine).get_view_names()) == {
        "report_workers",
        "report_out_of_scope",
        "report_studies",
    }
    migrate.upgrade(store.engine)
    with store.engine.connect() as conn:
        [(files,)] = conn.execute(
            select(func.sum(literal_column("files"))).select_from(table("report_workers"))
        )
    assert files == 9  # every audit row populate() wrote, back in the view


def test_0005_admits_out_of_scope_rows_and_its_downgrade_keeps_them_as_failures(store: Store):
    """0005 rebuilds audit_events and scanned_files on SQLite (a CHECK cannot change in place):
    the rows and every view survive, and going back turns refused files into failures."""
    populate(store, datetime.now(UTC))
    with store.engine.connect() as conn:
        failed = conn.execute(text("SELECT count(*) FROM audit_events WHERE outcome = 'failed'")).scalar_one()
    store.record_batch([], [audit("mr", "out_of_scope", reason="Modality MR is not screened")])
    with store.engine.connect() as conn:
        [(n,)] = conn.execute(
            select(func.sum(literal_column("files"))).select_from(table("report_out_of_scope"))
        )
        assert n == 1
        for view in VIEWS:
            conn.execute(select(literal_column("*")).select_from(table(view))).all()
    migrate.downgrade(store.engine, "0004")
    with store.engine.connect() as conn:
        outcomes = dict(
            conn.execute(text("SELECT outcome, count(*) FROM audit_events GROUP BY outcome")).all()
        )
        for view in VIEWS - {"report_out_of_scope", "report_studies"}:
            conn.execute(select(literal_column("*")).select_from(table(view))).all()
    assert outcomes["failed"] == failed + 1 and "out_of_scope" not in outcomes  # the MR is a failure now
    migrate.upgrade(store.engine)
    with pytest.raises(Exception, match=r"(?i)check|constraint"):  # a refusal needs its reason
        store.record_batch([], [audit("ct", "out_of_scope", reason=None)])


def test_0008_stores_a_heatmap_path_and_its_downgrade_keeps_the_results_and_views(store: Store):
    populate(store, datetime.now(UTC))
    store.record_batch(
        [result("mapped", positive=True, heatmap_path="/maps/2026-12-02/x.png")], [audit("mapped")]
    )
    results = table("results", literal_column("heatmap_path"), literal_column("content_sha256"))
    with store.engine.connect() as conn:
        paths = dict(conn.execute(select(results.c.content_sha256, results.c.heatmap_path)).all())
    assert (
        paths[sha("mapped")] == "/maps/2026-12-02/x.png" and sum(p is not None for p in paths.values()) == 1
    )
    migrate.downgrade(store.engine, "0007")
    assert "heatmap_path" not in {c["name"] for c in inspect(store.engine).get_columns("results")}
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(table("results"))).scalar() == len(paths)
        for view in VIEWS:  # every view still reads the table
            conn.execute(select(literal_column("*")).select_from(table(view))).all()
    migrate.upgrade(store.engine)
    assert migrate.current_revision(store.engine) == migrate.head_revision()


def test_0009_adds_the_pull_tables_and_its_downgrade_drops_only_them(store: Store):
    populate(store, datetime.now(UTC))
    migrate.downgrade(store.engine, "0008")
    tables = set(inspect(store.engine).get_table_names())
    assert not tables & {"pull_runs", "pull_instances"} and {"results", "outbox"} <= tables
    with store.engine.connect() as conn:
        for view in VIEWS:
            conn.execute(select(literal_column("*")).select_from(table(view))).all()
    migrate.upgrade(store.engine)
    assert {"pull_runs", "pull_instances"} <= set(inspect(store.engine).get_table_names())


def test_upgrading_twice_changes_nothing(engine: Engine):
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    migrate.require_head(engine)


def test_the_worker_refuses_a_database_not_at_head(db_url: str):
    engine = make_engine(db_url, create=True)
    try:
        with pytest.raises(ConfigError) as caught:
            migrate.require_head(engine)
        head = migrate.head_revision()
        assert f"at revision none (empty), expected {head}: run `xray-worker db upgrade`" in str(caught.value)
    finally:
        engine.dispose()


def test_a_database_from_a_newer_release_is_named_as_such(engine: Engine):
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(ConfigError, match="revision 9999, which this version of xray-screen does not know"):
        migrate.require_head(engine)


def test_revisions_form_one_numbered_line():
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = list(scripts.walk_revisions())
    assert len(scripts.get_heads()) == 1
    for script in revisions:
        assert re.fullmatch(r"\d{4}", script.revision)
        assert Path(script.path).name.startswith(f"{script.revision}_")
