"""``xray-worker scan``: screen an archive in place, read-only and resumable."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from worker import exitcodes
from worker.cli.common import (
    ExitError,
    decode_limits,
    model_options,
    model_overrides,
    open_model,
    open_predictor,
    open_store,
    settings_for,
)
from worker.cli.db import Since
from worker.config import Settings
from worker.errors import ClusterError, ConfigError, TransientError
from worker.runtime.signals import two_stage_shutdown
from worker.scan.progress import Progress, summary_lines
from worker.sinks.results_file import ResultsFile, output_format
from worker.sources.walk import FileFilter, distinct_roots, walk_files

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
    folders = _archive_roots(settings)
    if output is not None:
        _check_output(output, folders)
    store = open_store(settings)
    with ExitStack() as stack:
        stack.callback(store.close)
        vocab, make_scanner = _open_engine(stack, settings)
        try:
            results_file = ResultsFile(output, vocab) if output else None
        except OSError as exc:
            raise ExitError(f"cannot write --output {output}: {exc.strerror or exc}") from None
        progress = Progress(sys.stderr, interval=settings.scan.progress_interval, limit=limit)

        def unreadable(folder: Path, exc: OSError) -> None:
            log.warning("cannot read %s: %s", folder, exc.strerror or exc)
            scanner.counts.unreadable_folders += 1

        s = settings.scan
        scanner = make_scanner(
            files=walk_files(folders, FileFilter(s.include, s.exclude, since), on_error=unreadable),
            store=store,
            worker_host=socket.gethostname(),
            limit=limit,
            progress=progress,
            on_commit=results_file.write if results_file else None,
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
            if results_file:
                results_file.close()
    if scanner.stopping:
        how, code = "interrupted (the next run goes on from here)", exitcodes.INTERRUPTED
    elif code == exitcodes.OK and scanner.at_limit:
        how = f"stopped at --limit {limit} (the next run goes on from here)"
    for line in summary_lines(scanner.counts, progress.elapsed, how):
        click.echo(line, err=True)
    sys.exit(code)


def _open_engine(stack: ExitStack, settings: Settings) -> tuple[list[str], Callable[..., Any]]:
    """Load the model for the chosen engine (before any cluster is joined, so a bad model
    fails fast); return its classes and a function that builds the scanner."""
    if settings.scan.engine == "ray":
        model = open_model(settings)
        resources = _enter_ray(stack, settings)
        return model.vocab, lambda **common: _ray_scanner(settings, model, resources, common)
    from worker.scan.local import Scanner  # imports torch: not for --help

    predictor = open_predictor(settings)
    size = settings.inference.batch_size
    return predictor.model.vocab, lambda **common: Scanner(predictor=predictor, batch_size=size, **common)


def _enter_ray(stack: ExitStack, settings: Settings) -> dict[str, float]:
    """Join the cluster (or start a local one) until the scan ends."""
    from worker.scan.ray.cluster import ray_session

    try:
        return stack.enter_context(ray_session(settings.ray))
    except ConfigError as exc:
        raise ExitError(str(exc)) from None
    except TransientError as exc:
        raise ExitError(str(exc), exitcodes.TEMPFAIL) from None


def _ray_scanner(settings: Settings, model: Any, resources: dict[str, float], common: dict[str, Any]) -> Any:
    from worker.scan.ray.driver import RayScanner, RayScreening, size_pool
    from worker.scan.ray.stages import StageSpec

    pool = size_pool(resources, settings.ray, settings.inference.device)
    inference = settings.inference
    if not pool.gpus_per_actor:  # CPU actors: as many torch threads as CPUs reserved
        inference = replace(inference, device="cpu", torch_threads=max(1, round(pool.cpus_per_actor)))
    spec = StageSpec(
        model_path=str(model.path.resolve()),
        model_sha256=model.sha256,
        positive_class=model.positive_class,
        inference=inference,
        limits=decode_limits(settings),
        database_url=settings.database.url,
    )
    screening = RayScreening(model, spec, pool, settings.ray.block_files)
    return RayScanner(screening=screening, **common)


def _archive_roots(settings: Settings) -> list[Path]:
    roots = distinct_roots(Path(r) for r in settings.scan.roots)
    if not roots:
        raise ExitError("no folders to scan: name them (xray-worker scan /srv/archive) or set [scan] roots")
    for root in roots:
        if not root.exists():
            raise ExitError(f"archive folder {root} does not exist (a typo, or a share not mounted?)")
    return roots


def _check_output(output: Path, roots: list[Path]) -> None:
    try:
        output_format(output)
    except ConfigError as exc:
        raise ExitError(str(exc), exitcodes.USAGE) from None
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
