"""The metrics endpoint (worker/metrics/endpoint.py) for real: HTTP on 127.0.0.1, a port in
use, listen addresses; and the settings that turn it on."""

from __future__ import annotations

import socket
import urllib.request
from contextlib import ExitStack

import pytest
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from worker.config import load_settings
from worker.errors import ConfigError
from worker.metrics.endpoint import Endpoint, parse_listen, registry
from worker.metrics.monitoring import Monitoring


def scrape(host: str, port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_endpoint_serves_its_own_registry_with_the_process_metrics():
    found = registry(process=True)
    Counter("xray_screen_test_things", "Things.", registry=found).inc(3)
    port = free_port()
    endpoint = Endpoint.start(f"127.0.0.1:{port}", found)
    try:
        assert endpoint.address == ("127.0.0.1", port)
        metrics = scrape("127.0.0.1", port)
        assert metrics["xray_screen_test_things_total"] == 3
        assert metrics["process_resident_memory_bytes"] > 0
        assert "xray_screen_files_total" not in metrics  # nothing leaks from another registry
    finally:
        endpoint.close()
    with pytest.raises(OSError):  # closed: nothing listens any more
        scrape("127.0.0.1", port)


def test_a_port_in_use_is_a_configuration_error_naming_the_setting():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=r"\[metrics\] listen .*cannot listen"):
            Endpoint.start(f"127.0.0.1:{port}", registry(process=False))


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9108", ("127.0.0.1", 9108)),
        ("[::1]:9109", ("::1", 9109)),
        ("metrics.local:1", ("metrics.local", 1)),
    ],
)
def test_listen_addresses(listen, expected):
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9108", "127.0.0.1", "http://x:1"])
def test_bad_listen_settings_are_refused(listen):
    with pytest.raises(ConfigError, match=r"\[metrics\] listen"):
        load_settings(None, environ={}, overrides={"metrics.listen": listen})


def test_a_port_out_of_range_is_refused():
    with pytest.raises(ConfigError, match=r"\[metrics\] listen"):
        parse_listen("127.0.0.1:99999")


def test_metrics_are_off_by_default_and_on_with_a_listen_address():
    with ExitStack() as stack:
        off = Monitoring.open(stack, load_settings(None, environ={}))
        assert off.registry is None and off.endpoint is None and off.dispatcher is None
    port = free_port()
    settings = load_settings(None, environ={}, overrides={"metrics.listen": f"127.0.0.1:{port}"})
    with ExitStack() as stack:
        on = Monitoring.open(stack, settings)
        assert on.endpoint is not None and "process_cpu_seconds_total" in scrape("127.0.0.1", port)
    with pytest.raises(OSError):
        scrape("127.0.0.1", port)  # the stack closed it
