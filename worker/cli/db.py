"""``xray-worker db`` and ``xray-worker report``: the results database from the command line."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
from sqlalchemy import Engine

from worker.cli.common import settings_for
from worker.db import migrate
from worker.db.engine import make_engine, safe_url
from worker.db.errors import database_errors
from worker.db.render import FORMATS, render
from worker.db.report import flagged as flagged_report
from worker.db.report import parse_since, summary
from worker.errors import ConfigError, TransientError


class Since(click.ParamType):
    name = "WHEN"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime | None:
        if isinstance(value, datetime) or value is None:
            return value
        try:
            return parse_since(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def db_option(func: Any) -> Any:
    return click.option(
        "--db", "db_url", metavar="URL", help="Database URL. Default: [database] url (see config.toml)."
    )(func)


def report_options(func: Any) -> Any:
    func = click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format.",
    )(func)
    func = click.option(
        "--since",
        type=Since(),
        default="7d",
        show_default=True,
        help="Start of the period: 7d, 12h, 30m, 2w, an ISO date (UTC), or 'all'.",
    )(func)
    return db_option(func)


@contextmanager
def open_engine(ctx: click.Context, db_url: str | None, *, create: bool = False) -> Iterator[Engine]:
    """The configured database; any database problem becomes a one-line error (naming the
    database, without its password), which ``worker.cli.common.Commands`` maps to an exit code."""
    url = settings_for(ctx, **{"database.url": db_url}).database.url
    engine = None
    try:
        with database_errors():
            engine = make_engine(url, create=create)
            yield engine
    except TransientError as exc:
        raise TransientError(f"{safe_url(url)}: {exc}") from None
    finally:
        if engine is not None:
            engine.dispose()


@click.group()
def db() -> None:
    """Create, upgrade and inspect the results database.

    \b
    Example:
      xray-worker db upgrade                    # the [database] url, SQLite by default
      xray-worker db upgrade --db postgresql+psycopg://xray@dbhost/xray_screen
      xray-worker db current
    """


@db.command()
@click.argument("revision", default="head")
@db_option
@click.pass_context
def upgrade(ctx: click.Context, revision: str, db_url: str | None) -> None:
    """Create the database, or bring it up to the newest schema (or to REVISION).

    A SQLite file and its folder are created when missing. Upgrading keeps every row.

    \b
    Example:
      xray-worker db upgrade
      sqlite:////srv/xray-screen/var/xray-screen.db: upgraded from none to 0001 (head)
    """
    with open_engine(ctx, db_url, create=True) as engine:
        before = migrate.current_revision(engine)
        migrate.upgrade(engine, revision)
        after = migrate.current_revision(engine)
        where = safe_url(engine.url)
    mark = " (head)" if after == migrate.head_revision() else ""
    if before == after:
        click.echo(f"{where}: already at {after}{mark}")
    else:
        click.echo(f"{where}: upgraded from {before or 'none'} to {after}{mark}")


@db.command()
@click.option("--check", is_flag=True, help="Exit with status 78 unless the database is at head.")
@db_option
@click.pass_context
def current(ctx: click.Context, check: bool, db_url: str | None) -> None:
    """Print the database's schema revision, and whether it is the newest.

    \b
    Example:
      xray-worker db current
      sqlite:////srv/xray-screen/var/xray-screen.db: 0001 (head)
    """
    with open_engine(ctx, db_url) as engine:
        revision = migrate.current_revision(engine)
        where = safe_url(engine.url)
    head = migrate.head_revision()
    if revision == head:
        click.echo(f"{where}: {revision} (head)")
        return
    message = f"{where}: {revision or 'none (empty)'}, expected {head}: run `xray-worker db upgrade`"
    if check:
        raise ConfigError(message)
    click.echo(message)


@db.command()
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
@click.pass_context
def downgrade(ctx: click.Context, revision: str, yes: bool, db_url: str | None) -> None:
    """Go back to an older schema: REVISION is an id, -1 for one step, or base for none.

    Downgrading drops what the newer schema added; to base, it drops every result.

    \b
    Example:
      xray-worker db downgrade -1
      xray-worker db downgrade base --yes     # empty the database completely
    """
    with open_engine(ctx, db_url) as engine:
        where = safe_url(engine.url)
        before = migrate.current_revision(engine)
        if not yes:
            click.confirm(f"Downgrade {where} from {before} to {revision}? Data may be lost", abort=True)
        migrate.downgrade(engine, revision)
        after = migrate.current_revision(engine)
    click.echo(f"{where}: downgraded from {before or 'none'} to {after or 'none (empty)'}")


@click.group(invoke_without_command=True)
@report_options
@click.pass_context
def report(ctx: click.Context, since: datetime | None, fmt: str, db_url: str | None) -> None:
    """Summarise the screening: counts, positive rate, failures, slowest hours, models.

    \b
    Example:
      xray-worker report                        # the last 7 days, as a table
      xray-worker report --since 24h --format json
      xray-worker report flagged --since 2025-11-01 --format csv > flagged.csv
    """
    if ctx.invoked_subcommand is not None:
        return
    with open_engine(ctx, db_url) as engine:
        migrate.require_head(engine)
        result = summary(engine, since)
        result = dataclasses.replace(result, title=f"{result.title} of {safe_url(engine.url)}")
    click.echo(render(result, fmt))


@report.command()
@report_options
@click.pass_context
def flagged(ctx: click.Context, since: datetime | None, fmt: str, db_url: str | None) -> None:
    """List the files screened positive, most probable first, with where they are.

    \b
    Example:
      xray-worker report flagged --since 24h
      xray-worker report flagged --since all --format csv > flagged.csv
    """
    with open_engine(ctx, db_url) as engine:
        migrate.require_head(engine)
        result = flagged_report(engine, since)
    click.echo(render(result, fmt))
