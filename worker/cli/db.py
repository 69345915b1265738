"""``xray-worker db`` and ``xray-worker report``: the results database from the command line."""

from __future__ import annotations

import dataclasses
import functools
import io
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine, make_url, select

from worker import exitcodes
from worker.app import open_database
from worker.cli import monitor
from worker.cli.common import settings_for
from worker.config import PROJECT_ROOT
from worker.db import migrate
from worker.db.engine import make_engine, reader, safe_url, sqlite_file
from worker.db.errors import database_errors
from worker.db.render import FORMATS, render
from worker.db.report import deliveries as deliveries_report
from worker.db.report import flagged as flagged_report
from worker.db.report import flagged_table, parse_since, summary
from worker.db.report import studies as studies_report
from worker.db.schema import audit_events
from worker.drift.output import as_json, as_table
from worker.drift.periods import duration, parse_reference
from worker.errors import ConfigError, TransientError, UsageError


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


def report_options(func: Any, formats: tuple[str, ...] = FORMATS) -> Any:
    func = click.option(
        "--format",
        "fmt",
        type=click.Choice(formats),
        default="table",
        show_default=True,
        help="Output format"
        + (" (html: the dashboard page, with --out FILE)." if "html" in formats else "."),
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
@functools.partial(report_options, formats=(*FORMATS, "html"))
@click.option(
    "--brief",
    is_flag=True,
    help="Only the counts and labels, then where the database is and how to query it.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the report to this file instead of printing it.",
)
@click.pass_context
def report(
    ctx: click.Context, since: datetime | None, fmt: str, db_url: str | None, brief: bool, out: Path | None
) -> None:
    """Summarise the screening: counts, positive rate, failures, slowest hours, models.

    A SQLite database that does not exist yet is created, empty (as scan and watch do).
    --format html writes the dashboard: one self-contained page of charts (no network access),
    the period's volume, positive rate with control limits, P(PNEUMONIA) against the reference,
    the gate's refusals, failures, throughput, workers and PACS deliveries.

    \b
    Example:
      xray-worker report                        # the last 7 days, as a table
      xray-worker report --brief                # counts, labels, and how to query the database
      xray-worker report --since 24h --format json
      xray-worker report --since 30d --format html --out dashboard.html
      xray-worker report flagged --since 2025-11-01 --format csv > flagged.csv
      xray-worker report studies --since 24h    # one verdict per DICOM study
      xray-worker report deliveries             # what went to the PACS, what waits
      xray-worker report drift                  # has screening drifted? (exit 3 when it has)
    """
    if ctx.invoked_subcommand is not None:
        return
    if fmt == "html":
        _dashboard(ctx, since, db_url, out)
        return
    if out is not None:
        with _redirected(out):
            _summary(ctx, since, fmt, db_url, brief)
        click.echo(f"wrote {out}", err=True)
        return
    _summary(ctx, since, fmt, db_url, brief)


def _dashboard(ctx: click.Context, since: datetime | None, db_url: str | None, out: Path | None) -> None:
    settings = settings_for(ctx, **{"database.url": db_url})
    until = datetime.now(UTC)
    with open_engine(ctx, db_url, at_head=True) as engine:
        text = monitor.dashboard_html(engine, settings, since, until, safe_url(engine.url))
    if out is None:
        click.echo(text)
        return
    _write(out, text)
    click.echo(f"wrote the dashboard to {out}")


def _summary(ctx: click.Context, since: datetime | None, fmt: str, db_url: str | None, brief: bool) -> None:
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
@click.option(
    "--all-columns",
    is_flag=True,
    help="The table with every column: label, the DICOM UIDs, the source and the destination "
    "path (CSV and JSON always have them).",
)
@click.pass_context
def flagged(
    ctx: click.Context, since: datetime | None, fmt: str, db_url: str | None, all_columns: bool
) -> None:
    """List the files screened positive, most probable first, with where they are.

    The table shows when, P, the threshold, the model, the modality and accession number of a
    DICOM, and where the file is now; columns empty in every row are left out.

    \b
    Example:
      xray-worker report flagged --since 24h
      xray-worker report flagged --all-columns  # with the DICOM UIDs and both paths
      xray-worker report flagged --since all --format csv > flagged.csv
    """
    if fmt == "table" and not all_columns:
        _show(ctx, lambda engine, since: flagged_table(flagged_report(engine, since)), since, fmt, db_url)
    else:
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


@report.command(name="drift")
@click.option(
    "--reference",
    metavar="site-profile|START..END|DURATION",
    help="Compare with the site baseline stored with the model, a period (2026-11-01..2026-11-30, "
    "UTC dates included) or the DURATION just before the window (28d). Default: [drift] reference.",
)
@click.option("--window", metavar="DURATION", help="The recent window: 7d, 48h, 2w. Default: [drift] window.")
@click.option(
    "--until",
    type=Since(),
    help="End of the window (an ISO date or time, UTC; or 3d: three days ago). Default: now.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--metrics-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the figures as Prometheus metrics (xray_screen_drift_*) to this file, for "
    "node_exporter's textfile collector.",
)
@db_option
@click.pass_context
def drift_command(
    ctx: click.Context,
    reference: str | None,
    window: str | None,
    until: datetime | None,
    fmt: str,
    metrics_file: Path | None,
    db_url: str | None,
) -> None:
    """Has screening drifted? The recent window against a reference, figure by figure.

    Figures: the positive rate, the distribution of P(PNEUMONIA), the gate's refusal rate,
    the mix of formats and of image sizes; each with its limit (docs/drift.md). Exit status
    3 when any figure is beyond its limits (and a "drift" webhook is sent, see [notify]);
    0 when none is, and also when there are too few films to judge (the table says so).

    \b
    Example:
      xray-worker report drift                              # [drift]: the last 7d against the site profile
      xray-worker report drift --reference 2026-11-01..2026-11-30 --window 14d
      xray-worker report drift --reference 28d --until 2026-12-01   # the week before Dec 1st
      xray-worker report drift --format json --metrics-file /var/lib/xray-screen/drift.prom
    """
    if window is not None:
        duration(window)  # a mistake on the command line is a usage error (2), not a setting's (78)
    if reference is not None:
        parse_reference(reference)
    settings = settings_for(
        ctx, **{"database.url": db_url, "drift.reference": reference, "drift.window": window}
    )
    now = datetime.now(UTC)
    with open_engine(ctx, db_url, at_head=True) as engine:
        drift, described = monitor.drift_check(engine, settings, until or now)
    click.echo(as_json(drift, described) if fmt == "json" else as_table(drift, described["label"]))
    monitor.send_on(drift, described, settings, metrics_file, now)
    if drift.alarms:
        ctx.exit(exitcodes.DRIFT)


def _show(ctx: click.Context, build: Any, since: datetime | None, fmt: str, db_url: str | None) -> None:
    """A report subcommand's body: ``build(engine, since)`` on the database at head, printed."""
    with open_engine(ctx, db_url, at_head=True) as engine:
        result = build(engine, since)
    click.echo(render(result, fmt))


@contextmanager
def _redirected(out: Path) -> Iterator[None]:
    """click.echo's output into ``out`` (written only when the report is complete)."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        yield
    _write(out, buffer.getvalue())


def _write(out: Path, text: str) -> None:
    try:
        out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None


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
