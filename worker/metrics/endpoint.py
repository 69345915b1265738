"""A process's registry and the HTTP endpoint Prometheus scrapes it on.

``registry(process=True)`` is a fresh ``CollectorRegistry`` with prometheus-client's process,
platform and garbage-collector collectors (``process_cpu_seconds_total``,
``process_resident_memory_bytes``, ``python_info``, ...). ``Endpoint.start("127.0.0.1:9108",
registry)`` serves it at ``/metrics`` from a daemon thread until ``close()``; a port in use
is a ``ConfigError`` naming ``[metrics] listen``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from worker.errors import ConfigError

log = logging.getLogger(__name__)
_LISTEN = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})")


def registry(*, process: bool = True) -> CollectorRegistry:
    """A registry of this process's own; with ``process``, the standard process collectors."""
    found = CollectorRegistry()
    if process:
        ProcessCollector(registry=found)
        PlatformCollector(registry=found)
        GCCollector(registry=found)
    return found


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9108"`` or ``"[::1]:9108"`` -> (host, port); ``ConfigError`` otherwise."""
    match = _LISTEN.fullmatch(listen.strip())
    if match is None or int(match["port"]) > 65535:
        raise ConfigError(f'[metrics] listen = {listen!r}: must be host:port, e.g. "127.0.0.1:9108"')
    return match["v6"] or match["host"], int(match["port"])


class Endpoint:
    """``/metrics`` of ``registry`` on ``listen``, served by a daemon thread."""

    def __init__(self, server: Any, thread: Any):
        self._server, self._thread = server, thread

    @classmethod
    def start(cls, listen: str, registry: CollectorRegistry) -> Endpoint:
        host, port = parse_listen(listen)
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise ConfigError(
                f"[metrics] listen = {listen!r}: cannot listen there: {exc.strerror or exc} "
                "(another process on that port? give each service its own)"
            ) from None
        endpoint = cls(server, thread)
        log.info("metrics on http://%s:%d/metrics", *endpoint.address)
        return endpoint

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the port the system chose for port 0)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
