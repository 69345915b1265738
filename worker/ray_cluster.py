"""Joining a Ray cluster for ``scan --engine ray``, or starting a local one for the run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from worker.config import RaySettings
from worker.errors import ClusterError, ConfigError

log = logging.getLogger("worker.scan")
INSTALL_HINT = "pip install -e '.[ray]' (the xray-screen[ray] extra)"


def import_ray() -> Any:
    """Ray, or a ``ConfigError`` saying how to install it (it is an optional extra)."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(f"scan --engine ray needs Ray Data, not installed here: {INSTALL_HINT}") from exc
    return ray


@contextmanager
def ray_session(settings: RaySettings) -> Iterator[dict[str, float]]:
    """Connected to ``settings.address`` (or a new local instance) for the block; yields the
    cluster's resources (``{"CPU": 32.0, "GPU": 4.0, ...}``). ``ClusterError`` when the
    cluster cannot be reached."""
    ray = import_ray()
    # Ray's own chatter (token set-up, "progress bars disabled", "execution finished") is
    # not the operator's business; its warnings and errors still show, and its logs are
    # kept under /tmp/ray/session_latest/logs.
    for name in ("ray._private.authentication.authentication_token_setup", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    options: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    try:
        if settings.address:
            ray.init(address=settings.address, **options)
        else:
            ray.init(object_store_memory=settings.object_store_mb * 2**20, **options)
    except ConnectionError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {settings.address}: {exc}") from None
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the scan prints its own progress line
        context.print_on_execution_start = False
        resources = {k: float(v) for k, v in ray.cluster_resources().items()}
        where = settings.address or "a local Ray instance"
        log.info("Ray: %s with %g CPUs, %g GPUs", where, resources.get("CPU", 0), resources.get("GPU", 0))
        yield resources
    finally:
        ray.shutdown()
