"""``xray-worker pull``: films queried and retrieved from PACS into the inbox (worker/pull/)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

import click

from worker import exitcodes
from worker.app import open_pullers, run_pull
from worker.cli.common import assignments_overrides, set_option, settings_for


class Day(click.ParamType):
    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        try:
            return datetime.strptime(str(value), "%Y-%m-%d").date()
        except ValueError:
            self.fail(f"{value!r} is not a date YYYY-MM-DD", param, ctx)


@click.command()
@click.option(
    "--source",
    "names",
    multiple=True,
    metavar="NAME",
    help="Only this [[pull.sources]] name (repeatable). Default: every source.",
)
@click.option("--since", type=Day(), help="Studies from this date (YYYY-MM-DD) to today.")
@click.option("--days", type=click.IntRange(min=0), help="Studies of the last N days and today.")
@click.option(
    "--accessions",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Only the studies with these accession numbers: a file, one a line (any date, "
    "unless --since or --days is given too).",
)
@click.option(
    "--max-instances", type=int, help="Instances retrieved per source at most. Default: its max_instances."
)
@click.option("--inbox", type=click.Path(file_okay=False, path_type=Path), help="Default: [inbox] path.")
@click.option("--db", "db_url", help="Database URL. Default: [database] url.")
@set_option("pull.batch_size=50")
@click.pass_context
def pull(
    ctx: click.Context,
    names: tuple[str, ...],
    since: date | None,
    days: int | None,
    accessions: Path | None,
    max_instances: int | None,
    inbox: Path | None,
    db_url: str | None,
    assignments: tuple[str, ...],
) -> None:
    """Query PACS for CR and DX films (C-FIND) and retrieve them into the inbox for `watch`.

    Each [[pull.sources]] PACS is asked for its studies of the period, their series of the
    source's modalities and their instances; what it finds is recorded, then retrieved with
    C-GET (or C-MOVE to our `receive`), at most max_instances per run, in its time window.
    A rerun retrieves nothing twice; a run killed at any moment is completed by the next.
    Without --since or --days, a source goes on from its last run's high-water mark.
    Exit status: 0; 1 when some instances failed (they are tried again next run); 69 when a
    PACS refused (its AE titles, a failure status); 75 when it could not be reached.

    \b
    Example:
      xray-worker pull --days 1               # yesterday's and today's studies, every source
      xray-worker pull --source main --since 2026-12-01
      xray-worker pull --accessions wanted.txt
      xray-worker report pulls                # found, retrieved, failed per night and PACS
    """
    overrides: dict[str, Any] = {"inbox.path": inbox, "database.url": db_url}
    overrides.update(assignments_overrides(assignments))
    settings = settings_for(ctx, **overrides)
    if since is not None and days is not None:
        raise click.UsageError("--since and --days: choose one")
    pullers = open_pullers(settings, names)
    if max_instances is not None:
        for puller in pullers:
            puller.limit(max_instances)

    from worker.runtime.signals import two_stage_shutdown

    with two_stage_shutdown(
        lambda: [p.stop() for p in pullers],
        on_first=lambda name: click.echo(f"{name}: finishing the batches in hand, then stopping", err=True),
        on_second=lambda name: click.echo(f"{name} again: exiting now; the next run takes over", err=True),
    ):
        summaries, errors = run_pull(pullers, since=since, days=days, accessions=accessions)
    for summary in summaries:
        click.echo(summary.line())
    if errors:
        raise errors[0]
    if any(s.failed for s in summaries):
        ctx.exit(exitcodes.SOME_FILES_FAILED)
