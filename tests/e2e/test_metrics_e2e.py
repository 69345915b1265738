"""The real `xray-worker watch` process with metrics and a webhook on: its /metrics endpoint
on a port the test picks (127.0.0.1 only) says what the database says, and the webhook hears
started, each positive, the failure and stopped."""

from __future__ import annotations

import socket
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from daemon_harness import Site, wait_for
from prometheus_client.parser import text_string_to_metric_families
from webhook_server import WebhookServer

from worker.config import PROJECT_ROOT
from worker.db.schema import results

pytestmark = pytest.mark.slow
SHIPPED = PROJECT_ROOT / "models" / "pneumonia-resnet18" / "export.pkl"
SAMPLES = sorted((PROJECT_ROOT / "samples").iterdir())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict[str, dict[str, float]]:
    """Metric -> {label value (outcome or label, else ""): value}, from the live endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.labels.get("outcome") or s.labels.get("label") or ""
            found.setdefault(s.name, {})[key] = s.value
    return found


def test_watch_serves_metrics_equal_to_the_database_and_posts_notifications(tmp_path: Path):
    port, hook = free_port(), WebhookServer()
    site = Site(tmp_path, f"sqlite:///{tmp_path / 'results.db'}", SHIPPED)
    try:
        proc = site.start(
            "w1",
            "--set",
            f"metrics.listen=127.0.0.1:{port}",
            "--set",
            f"notify.urls={hook.url}",
            "--set",
            "notify.backoff_base=0.05",
        )
        assert scrape(port)["xray_screen_files_total"] == {
            "screened": 0,
            "duplicate": 0,
            "failed": 0,
            "out_of_scope": 0,
        }
        broken = tmp_path / "broken.jpeg"
        broken.write_bytes(SAMPLES[-1].read_bytes()[:1500])
        site.drop([*SAMPLES, broken])
        wait_for(lambda: len(site.filed()) == 7, 120, f"not all filed:\n{site.log()[-3000:]}")
        wait_for(lambda: scrape(port)["xray_screen_files_total"].get("failed") == 1, 10, "metrics lag")
        found = scrape(port)
        rows = site.audit_rows()
        assert {k: v for k, v in found["xray_screen_files_total"].items() if v} == Counter(
            r.outcome for r in rows
        )
        labels = Counter(site.column(results.c.label))
        assert {k: v for k, v in found["xray_screen_predictions_total"].items() if v} == labels
        assert found["xray_screen_latency_seconds_count"][""] == 7
        assert site.stop(proc) == 0
    finally:
        site.close()
        hook.close()
    events = [b["event"] for b in hook.bodies()]
    assert events[0] == "started" and events[-1] == "stopped"
    assert Counter(events[1:-1]) == {"positive": labels["PNEUMONIA"], "failure": 1}
    for body in hook.bodies():
        assert "patient_id" not in body["data"] and "accession_number" not in body["data"]
