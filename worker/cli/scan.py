"""``xray-worker scan``: screen an archive in place, read-only and resumable."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from worker.app import run_scan
from worker.cli.common import model_options, model_overrides, settings_for
from worker.cli.db import Since


@click.command()
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Only files matching this pattern, e.g. '*.dcm' (repeatable, case-insensitive). "
    "Default: [scan] include, else every file.",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Never read files or folders matching this pattern (repeatable). Default: [scan] exclude.",
)
@click.option("--since", type=Since(), help="Only files modified since: 7d, 12h, 2w, an ISO date (UTC).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Read at most N files this run (unchanged files do not count); the next run goes on.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write this run's files and verdicts to FILE.csv or FILE.jsonl (replaced).",
)
@click.option("--db", "db_url", metavar="URL", help="Results database URL. Default: [database] url.")
@click.option(
    "--metrics-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="At the end, write the run's metrics to FILE.prom for node_exporter's textfile collector. "
    "Default: [metrics] textfile, else none.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    help="local: this machine's threads; ray: a Ray cluster (xray-screen[ray]). Default: [scan] engine.",
)
@click.option(
    "--ray-address",
    metavar="ADDR",
    help="Head of the Ray cluster to join (host:6379); default [ray] address, else a local instance.",
)
@model_options
@click.pass_context
def scan(
    ctx: click.Context,
    roots: tuple[Path, ...],
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    since: datetime | None,
    limit: int | None,
    output: Path | None,
    db_url: str | None,
    metrics_file: Path | None,
    engine: str | None,
    ray_address: str | None,
    **flags: Any,
) -> None:
    """Screen every X-ray below the ROOT folders into the results database; files are only read.

    A file this model already screened, with the same path, size and modification time,
    is skipped without being read; the same content under another path is recorded as a
    duplicate without running the model. Stop it at any time (Ctrl-C, SIGTERM): the batch
    in hand is committed and the next run goes on from there. Without ROOT, the settings'
    [scan] roots are scanned. Progress goes to stderr, and a summary at the end.

    \b
    Exit status: 0 done (undecodable files are recorded as failed, not an error);
    130 stopped by a signal (the work done is kept); 75 database (or Ray cluster)
    unavailable; 78 settings.

    With --engine ray the same scan runs on a Ray cluster (decoding on its CPUs, the model
    on its GPUs, see docs/scale-out.md), with the same rows in the database.

    \b
    Example:
      xray-worker scan /srv/archive/xray --include '*.dcm' --since 30d --output night.csv
      xray-worker scan                       # the [scan] roots, as the nightly timer does
      xray-worker scan /mnt/archive --engine ray --ray-address head.example:6379
      xray-worker scan --metrics-file /var/lib/node_exporter/textfile_collector/xray-screen-scan.prom
    """
    settings = settings_for(
        ctx,
        **model_overrides(flags),
        **{
            "database.url": db_url,
            "metrics.textfile": str(metrics_file) if metrics_file else None,
            "scan.roots": tuple(map(str, roots)) or None,
            "scan.include": include or None,
            "scan.exclude": exclude or None,
            "scan.engine": engine,
            "ray.address": ray_address,
        },
    )
    lines, code = run_scan(settings, since=since, limit=limit, output=output, err=sys.stderr)
    for line in lines:
        click.echo(line, err=True)
    sys.exit(code)
