"""``xray-worker db`` and ``xray-worker report``: the results database from the command line."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine, make_url, select

from worker.app import open_database
from worker.cli.common import settings_for
from worker.config import PROJECT_ROOT
from worker.db import migrate
from worker.db.engine import make_engine, reader, safe_url, sqlite_file
from worker.db.errors import database_errors
from worker.db.render import FORMATS, render
from worker.db.report import deliveries as deliveries_report
from worker.db.report import flagged as flagged_report
from worker.db.report import parse_since, summary
from worker.db.report import studies as studies_report
from worker.db.schema import audit_events
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
def open_engine(
    ctx: click.Context, db_url: str | None, *, create: bool = False, at_head: bool = False
) -> Iterator[Engine]:
    """The configured database; any database problem becomes a one-line error (naming the
    database, without its password), which ``worker.cli.common.Commands`` maps to an exit code.

    ``at_head``: refuse a database behind the newest schema, except a SQLite file that does
    not exist yet, which is created at it (``worker.app.open_database``, as ``scan`` does).
    """
    url = settings_for(ctx, **{"database.url": db_url}).database.url
    engine = open_database(url) if at_head else None  # its errors name the database already
    try:
        with database_errors():
            if engine is None:
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

    A SQLite file and its folder are created when missing (scan, watch and report also
    create a missing SQLite file, at the newest schema; they never upgrade one, nor touch
    PostgreSQL). Upgrading keeps every row.

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
@click.option(
    "--brief",
    is_flag=True,
    help="Only the counts and labels, then where the database is and how to query it.",
)
@click.pass_context
def report(ctx: click.Context, since: datetime | None, fmt: str, db_url: str | None, brief: bool) -> None:
    """Summarise the screening: counts, positive rate, failures, slowest hours, models.

    A SQLite database that does not exist yet is created, empty (as scan and watch do).

    \b
    Example:
      xray-worker report                        # the last 7 days, as a table
      xray-worker report --brief                # counts, labels, and how to query the database
      xray-worker report --since 24h --format json
      xray-worker report flagged --since 2025-11-01 --format csv > flagged.csv
      xray-worker report studies --since 24h    # one verdict per DICOM study
      xray-worker report deliveries             # what went to the PACS, what waits
    """
    if ctx.invoked_subcommand is not None:
        return
    with open_engine(ctx, db_url, at_head=True) as engine:
        result = summary(engine, since)
        empty = not (result.totals["files"] or result.totals["results"])
        stored = not empty or (since is not None and _anything_stored(engine))
        url = engine.url
    result = dataclasses.replace(result, title=f"{result.title} of {safe_url(url)}")
    if fmt == "table" and not stored:
        result = dataclasses.replace(result, sections=[])  # six empty tables say less than one line
    elif brief:
        result = dataclasses.replace(result, sections=[s for s in result.sections if s.name == "labels"])
    click.echo(render(result, fmt))
    if fmt != "table":
        return
    if not stored:
        lines = _nothing_yet(ctx, db_url)
    elif empty:
        everything = _cmd(ctx, "report", "--since", "all", db=db_url)
        lines = [f"Nothing handled in this window; the database has earlier files: {everything}"]
    elif brief:
        lines = _how_to_look(ctx, url, db_url)
    else:
        lines = []
    if lines:
        click.echo("\n" + "\n".join(lines))


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
    _show(ctx, flagged_report, since, fmt, db_url)


@report.command(name="studies")
@report_options
@click.pass_context
def studies_command(ctx: click.Context, since: datetime | None, fmt: str, db_url: str | None) -> None:
    """List DICOM studies with their verdict: positive when any screened film of it is.

    \b
    Example:
      xray-worker report studies --since 24h
      xray-worker report studies --since all --format csv > studies.csv
    """
    _show(ctx, studies_report, since, fmt, db_url)


@report.command(name="deliveries")
@report_options
@click.pass_context
def deliveries_command(ctx: click.Context, since: datetime | None, fmt: str, db_url: str | None) -> None:
    """Show PACS deliveries: objects per destination and status, last errors, the backlog.

    \b
    Example:
      xray-worker report deliveries             # queued in the last 7 days, and the backlog
      xray-worker report deliveries --since all --format json
    """
    _show(ctx, deliveries_report, since, fmt, db_url)


def _show(ctx: click.Context, build: Any, since: datetime | None, fmt: str, db_url: str | None) -> None:
    """A report subcommand's body: ``build(engine, since)`` on the database at head, printed."""
    with open_engine(ctx, db_url, at_head=True) as engine:
        result = build(engine, since)
    click.echo(render(result, fmt))


# -- guiding a new user --------------------------------------------------------------


def _anything_stored(engine: Engine) -> bool:
    """Whether any file was ever handled (a report's window may just be empty)."""
    with database_errors(), reader(engine).connect() as conn:
        return conn.execute(select(audit_events.c.id).limit(1)).first() is not None


def _nothing_yet(ctx: click.Context, db_url: str | None) -> list[str]:
    samples = PROJECT_ROOT / "samples"
    if not samples.is_dir():
        return [
            f"Nothing screened yet: screen a folder of X-rays with {_cmd(ctx, 'scan', 'FOLDER', db=db_url)}"
        ]
    return [
        "Nothing screened yet. Screen the six sample X-rays into this database, then report again:",
        f"  {_cmd(ctx, 'scan', _shown(samples) + '/', db=db_url)}",
        f"  {_cmd(ctx, 'report', '--brief', db=db_url)}",
    ]


def _how_to_look(ctx: click.Context, url: Any, db_url: str | None) -> list[str]:
    """Where the database is, and a first query to run on it."""
    query = "SELECT * FROM report_daily_counts"
    path = sqlite_file(url)
    if path is not None:
        where, shell = (
            f"the SQLite file {_shown(path)}",
            f"sqlite3 -readonly -box {shlex.quote(_shown(path))} '{query}'",
        )
    else:
        libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=True)
        where, shell = f"PostgreSQL, {libpq}", f"psql {shlex.quote(libpq)} -c '{query}'"
    docs = PROJECT_ROOT / "docs" / "reporting.md"
    return [
        f"The results are in {where}. To look at them:",
        f"  {shell}",
        f"  {_cmd(ctx, 'report', 'flagged', db=db_url)}      # the positive files, with their paths",
        *([f"  tables, views and more queries: {_shown(docs)}"] if docs.is_file() else []),
    ]


def _cmd(ctx: click.Context, *args: str, db: str | None = None) -> str:
    """An xray-worker command line to suggest, with this run's --config and --db."""
    words = [_program()]
    if ctx.obj and ctx.obj.get("config_path"):
        words += ["--config", str(ctx.obj["config_path"])]
    words += args
    if db:
        words += ["--db", safe_url(db)]
    return " ".join(shlex.quote(word) for word in words)


def _program() -> str:
    """How this program was started (``.venv/bin/xray-worker``), or ``xray-worker`` when on PATH."""
    argv0 = Path(sys.argv[0])
    if argv0.name != "xray-worker":
        return "xray-worker"
    on_path = shutil.which("xray-worker")
    if on_path and Path(on_path).resolve() == argv0.resolve():
        return "xray-worker"
    return _shown(argv0)


def _shown(path: Path) -> str:
    """A path as a user would type it here: relative below the current folder, else absolute."""
    absolute = path.absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)
