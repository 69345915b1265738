"""``xray-worker db`` and ``xray-worker report``: the results database from the command line."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from worker import app_db, exitcodes
from worker.app_db import FORMATS, Invocation
from worker.cli.common import settings_for
from worker.drift.periods import duration, parse_reference, parse_since
from worker.errors import UsageError


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


def database_url(ctx: click.Context, db_url: str | None) -> str:
    """The database's URL: ``--db``, else ``[database] url``."""
    return settings_for(ctx, **{"database.url": db_url}).database.url


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
    click.echo(app_db.upgrade_database(database_url(ctx, db_url), revision))


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
    click.echo(app_db.database_revision(database_url(ctx, db_url), check=check))


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
    confirm = None if yes else functools.partial(click.confirm, abort=True)
    click.echo(app_db.downgrade_database(database_url(ctx, db_url), revision, confirm=confirm))


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
      xray-worker report pulls                  # what was pulled from the PACS, per night
      xray-worker report drift                  # has screening drifted? (exit 3 when it has)
    """
    if ctx.invoked_subcommand is not None:
        return
    if fmt == "html":
        text = app_db.dashboard_page(settings_for(ctx, **{"database.url": db_url}), since)
        if out is None:
            click.echo(text)
            return
        _write(out, text)
        click.echo(f"wrote the dashboard to {out}")
        return
    invocation = Invocation(ctx.obj.get("config_path") if ctx.obj else None, db_url)
    text = app_db.report_summary(database_url(ctx, db_url), since, fmt, brief=brief, invocation=invocation)
    if out is None:
        click.echo(text)
        return
    _write(out, text)
    click.echo(f"wrote {out}", err=True)


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
    click.echo(app_db.report_text(database_url(ctx, db_url), "flagged", since, fmt, all_columns=all_columns))


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
    click.echo(app_db.report_text(database_url(ctx, db_url), "studies", since, fmt))


@report.command(name="deliveries")
@report_options
@click.pass_context
def deliveries_command(ctx: click.Context, since: datetime | None, fmt: str, db_url: str | None) -> None:
    """Show deliveries to the PACS, RIS and EHR: rows per destination and status, last errors, the backlog.

    \b
    Example:
      xray-worker report deliveries             # queued in the last 7 days, and the backlog
      xray-worker report deliveries --since all --format json
    """
    click.echo(app_db.report_text(database_url(ctx, db_url), "deliveries", since, fmt))


@report.command(name="pulls")
@report_options
@click.pass_context
def pulls_command(ctx: click.Context, since: datetime | None, fmt: str, db_url: str | None) -> None:
    """Show pulls from PACS: per night and PACS, the instances found, retrieved, already
    screened, failed and still waiting; then the runs, with the dates each asked for.

    \b
    Example:
      xray-worker report pulls                  # runs started in the last 7 days
      xray-worker report pulls --since all --format json
    """
    click.echo(app_db.report_text(database_url(ctx, db_url), "pulls", since, fmt))


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
    drift = app_db.check_drift(settings, until or now)
    click.echo(drift.text(fmt))
    drift.send(settings, metrics_file, now)
    if drift.alarms:
        ctx.exit(exitcodes.DRIFT)


def _write(out: Path, text: str) -> None:
    try:
        out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
