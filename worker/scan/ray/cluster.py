"""Joining a Ray cluster for ``scan --engine ray``, or starting a local one for the run."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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


def _probe(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at a ``host:port`` cluster address
    (Ray itself retries for minutes). ``auto`` and other forms are left to Ray."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address)
    if match is None:
        return
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _use_token_if_any() -> None:
    """A cluster started with token authentication (Ray's default) admits a driver only with
    its token, which Ray's client sends only in token mode: set it when a token is at hand
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and the operator
    did not choose a mode (``RAY_AUTH_MODE``)."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_TOKEN") or Path(path).is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


@contextmanager
def ray_session(settings: RaySettings) -> Iterator[dict[str, float]]:
    """Connected to ``settings.address`` (or a new local instance) for the block; yields the
    cluster's resources (``{"CPU": 32.0, "GPU": 4.0, ...}``). ``ClusterError`` when the
    cluster cannot be reached."""
    if settings.address:
        _probe(settings.address)
        _use_token_if_any()  # before Ray is imported: it reads its settings then
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
