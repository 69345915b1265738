"""``xray-worker scan``: screen an archive in place, read-only and resumable."""

from __future__ import annotations

import logging
import socket
import sys
from contextlib import AbstractContextManager, ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from worker import exitcodes
from worker.app import open_scan_engine, open_store, output_format, results_file, scan_files, scan_roots
from worker.cli.common import ExitError, model_options, model_overrides, settings_for
from worker.cli.db import Since
from worker.errors import ClusterError, ConfigError, TransientError
from worker.runtime.signals import two_stage_shutdown
from worker.scan.progress import Progress, summary_lines

log = logging.getLogger("worker")


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
    """
    settings = settings_for(
        ctx,
        **model_overrides(flags),
        **{
            "database.url": db_url,
            "scan.roots": tuple(map(str, roots)) or None,
            "scan.include": include or None,
            "scan.exclude": exclude or None,
            "scan.engine": engine,
            "ray.address": ray_address,
        },
    )
    folders = scan_roots(settings)
    if output is not None:
        _check_output(output, folders)
    store = open_store(settings)
    with ExitStack() as stack:
        stack.callback(store.close)
        vocab, make_scanner = open_scan_engine(stack, settings)
        out = results_file(output, vocab) if output else None
        progress = Progress(sys.stderr, interval=settings.scan.progress_interval, limit=limit)

        def unreadable(folder: Path, exc: OSError) -> None:
            log.warning("cannot read %s: %s", folder, exc.strerror or exc)
            scanner.counts.unreadable_folders += 1

        scanner = make_scanner(
            files=scan_files(settings, folders, since, unreadable),
            store=store,
            worker_host=socket.gethostname(),
            limit=limit,
            progress=progress,
            on_commit=out.write if out else None,
        )
        how, code = "done", exitcodes.OK
        try:
            with _graceful_signals(scanner):
                scanner.run()
        except ClusterError as exc:
            how, code = f"stopped: {exc}", exitcodes.TEMPFAIL
        except TransientError as exc:
            how, code = f"stopped, database unavailable ({exc})", exitcodes.TEMPFAIL
        finally:
            progress.finish()
            if out:
                out.close()
    if scanner.stopping:
        how, code = "interrupted (the next run goes on from here)", exitcodes.INTERRUPTED
    elif code == exitcodes.OK and scanner.at_limit:
        how = f"stopped at --limit {limit} (the next run goes on from here)"
    for line in summary_lines(scanner.counts, progress.elapsed, how):
        click.echo(line, err=True)
    sys.exit(code)


def _check_output(output: Path, roots: list[Path]) -> None:
    try:
        output_format(output)
    except ConfigError as exc:
        raise ExitError(str(exc), exitcodes.USAGE) from None  # a usage error, not a setting
    where = output.expanduser().absolute().resolve()
    for root in roots:
        if where.is_relative_to(root.resolve()):
            raise ExitError(
                f"--output {output} is inside the archive folder {root}, which a scan never "
                "writes to: put it somewhere else",
                exitcodes.USAGE,
            )


def _graceful_signals(scanner: Any) -> AbstractContextManager[None]:
    """First SIGINT/SIGTERM: finish and commit what is in hand, then stop. Second: exit now."""
    return two_stage_shutdown(
        scanner.stop,
        on_first=lambda name: click.echo(
            f"\n{name}: committing the files in hand, then stopping (again to exit at once)", err=True
        ),
        on_second=lambda name: click.echo(
            f"{name} again: exiting now; the next run redoes the batch", err=True
        ),
    )
