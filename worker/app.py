"""Settings -> the parts: the one place that knows how a Predictor, a Store, a Daemon or a
Scanner is built from a ``Settings`` object.

The CLI only parses options into settings and calls these builders. They raise the
project's own errors (``ConfigError``, ``ModelError``: the process cannot start;
``TransientError``: try again later), which ``worker.cli.common`` turns into exit codes in
one place. Heavy imports (torch, fastai, Ray) happen inside the builders, so ``--help`` and
``db`` commands stay fast.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from worker.config import Settings
from worker.errors import ConfigError, TransientError

log = logging.getLogger(__name__)


# -- the model -----------------------------------------------------------------------


def open_model(settings: Settings) -> Any:
    """The model, loaded only if its SHA-256 is the configured (or pinned) one."""
    from worker.model.learner import load_model

    m = settings.model
    return load_model(m.path, sha256=m.expected_sha256(), trust=m.trust, positive_class=m.positive_class)


def decode_limits(settings: Settings) -> Any:
    from worker.decode import Limits

    return Limits(settings.decode.max_pixels, settings.decode.max_side, settings.decode.min_side)


def open_predictor(settings: Settings, model: Any = None) -> Any:
    """The batched predictor on the configured device (the model loaded and checked if not given)."""
    from worker.model.predictor import Predictor

    return Predictor(model or open_model(settings), settings.inference, decode_limits(settings))


def files_named(paths: Iterable[Path], skipped: Any = None) -> Iterator[Path]:
    """``predict``'s files: as named, folders walked (``worker.sources.walk.expand_paths``)."""
    from worker.sources.walk import expand_paths

    return expand_paths(paths, skipped)


def is_failure(outcome: Any) -> bool:
    """True for a file the predictor could not screen (a ``Failure``, with its reason)."""
    from worker.model.predictor import Failure

    return isinstance(outcome, Failure)


# -- the database --------------------------------------------------------------------


def open_store(settings: Settings) -> Any:
    """The results database; ``ConfigError`` unless at head, ``TransientError`` if unreachable."""
    from worker.db.engine import safe_url
    from worker.db.store import Store

    store = Store(settings.database.url, store_patient_ids=settings.database.store_patient_ids)
    try:
        store.require_head()
    except TransientError as exc:
        store.close()
        raise TransientError(f"{safe_url(settings.database.url)}: {exc}") from None
    return store


# -- watch ---------------------------------------------------------------------------


def absolute(path: Path) -> Path:
    """Absolute, so that the audit trail says exactly where files were and went."""
    return path.expanduser().absolute()


def build_daemon(settings: Settings, *, faults: Any = None) -> Any:
    """The inbox daemon: umask, folders, work area, inbox watcher, warmed-up predictor, store."""
    from worker.daemon import Daemon, Folders
    from worker.runtime.sdnotify import Notifier
    from worker.sources.claim import WorkArea, default_worker_id
    from worker.sources.inbox import Inbox

    box = dataclasses.replace(
        settings.inbox,
        path=absolute(settings.inbox.path),
        processed=absolute(settings.inbox.processed),
        failed=absolute(settings.inbox.failed),
    )
    os.umask(int(box.umask, 8))  # before anything is created: folders, sidecars, the database
    store = open_store(settings)
    predictor = open_predictor(settings)
    predictor.warm_up()
    try:
        for folder in (box.path, box.processed, box.failed):
            folder.mkdir(parents=True, exist_ok=True)
        work = WorkArea(box.path, box.worker_id or default_worker_id())
    except (OSError, ConfigError) as exc:
        raise ConfigError(f"cannot use the inbox {box.path}: {exc}") from None
    return Daemon(
        inbox=Inbox(
            box.path,
            recursive=box.recursive,
            ignore=box.ignore,
            stability_seconds=box.stability_seconds,
            polling=box.polling,
            poll_interval=box.poll_interval,
            rescan_interval=box.rescan_interval,
        ),
        work=work,
        predictor=predictor,
        store=store,
        folders=Folders(box.processed, box.failed, box.layout),
        batch_size=settings.inference.batch_size,
        max_wait=box.max_wait_ms / 1000,
        worker_host=socket.gethostname(),
        notifier=Notifier(),
        lease_seconds=box.lease_seconds,
        faults=faults,
    )


def faults_from_environ() -> Any:
    """Crash points for bench/chaos.py, from XRAY_SCREEN_FAULT (unset: none)."""
    from worker.runtime.faults import Faults

    return Faults.from_environ(os.environ)


# -- scan ----------------------------------------------------------------------------


def scan_roots(settings: Settings) -> list[Path]:
    """The archive folders to scan, each once; ``ConfigError`` if none or one is missing."""
    from worker.sources.walk import distinct_roots

    roots = distinct_roots(Path(r) for r in settings.scan.roots)
    if not roots:
        raise ConfigError("no folders to scan: name them (xray-worker scan /srv/archive) or set [scan] roots")
    for root in roots:
        if not root.exists():
            raise ConfigError(f"archive folder {root} does not exist (a typo, or a share not mounted?)")
    return roots


def scan_files(
    settings: Settings,
    roots: list[Path],
    since: datetime | None,
    on_error: Callable[[Path, OSError], None],
) -> Iterator[Any]:
    """The streaming walk of ``roots`` with the [scan] include and exclude patterns."""
    from worker.sources.walk import FileFilter, walk_files

    s = settings.scan
    return walk_files(roots, FileFilter(s.include, s.exclude, since), on_error=on_error)


def results_file(output: Path, classes: Iterable[str]) -> Any:
    """``--output``: the sink that writes each committed verdict to CSV or JSON Lines."""
    from worker.sinks.results_file import ResultsFile

    try:
        return ResultsFile(output, list(classes))
    except OSError as exc:
        raise ConfigError(f"cannot write --output {output}: {exc.strerror or exc}") from None


def output_format(output: Path) -> str:
    from worker.sinks.results_file import output_format as fmt

    return fmt(output)


def open_scan_engine(stack: ExitStack, settings: Settings) -> tuple[list[str], Callable[..., Any]]:
    """Load the model for the chosen engine (before any cluster is joined, so a bad model
    fails fast); its classes, and a function that builds the scanner from the run's parts."""
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

    return stack.enter_context(ray_session(settings.ray))


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
