"""The monitoring docs cannot rot: every metric the Grafana dashboard, the alert rules and
docs/monitoring.md name is one the code exports (worker/metrics/catalog.py), and every metric
the code exports is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from worker.metrics.catalog import exported_names

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "monitoring"
# Metric names in PromQL: ours, the process collectors', and Prometheus's own `up`.
METRIC = re.compile(r"\b((?:xray_screen|process|python)_[a-z0-9_]+|up)\b")
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created", "_info")


def families(names: set[str]) -> set[str]:
    """Sample names and the families they belong to (a histogram's name, a counter's without _total)."""
    found = set(names)
    for name in names:
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                found.add(name.removesuffix(suffix))
    return found


def expressions(value: object) -> list[str]:
    """Every "expr" and "query" string of a JSON or YAML document, at any depth."""
    if isinstance(value, dict):
        own = [v for k, v in value.items() if k in ("expr", "query") and isinstance(v, str)]
        return own + [e for v in value.values() for e in expressions(v)]
    if isinstance(value, list):
        return [e for v in value for e in expressions(v)]
    return []


def used(texts: list[str]) -> set[str]:
    return {m for text in texts for m in METRIC.findall(text)} - {"up"}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_names()


def test_the_dashboards_queries_use_only_exported_metrics(exported):
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    queries = expressions(dashboard)
    assert len(queries) >= 10
    names = used(queries)
    assert {"xray_screen_files_total", "xray_screen_latency_seconds_bucket"} <= names
    assert names - exported == set()


def test_the_alert_rules_use_only_exported_metrics(exported):
    rules = yaml.safe_load((DOCS / "alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for group in rules["groups"] for r in group["rules"]}
    for needed in (
        "XrayScreenDaemonDown",
        "XrayScreenInboxBacklogGrowing",
        "XrayScreenFailureRate",
        "XrayScreenGateRefusalRate",
        "XrayScreenPositiveRateDrift",
    ):
        assert needed in alerts
    assert used(list(alerts.values())) - exported == set()


def test_the_monitoring_page_names_only_exported_metrics_and_all_of_ours(exported):
    text = (ROOT / "docs" / "monitoring.md").read_text()
    named = used([text])
    assert named - families(exported) == set()
    ours = {base(n) for n in exported if n.startswith("xray_screen_")}
    assert ours - families(named) == set()  # every family of ours has its line in the page


def base(name: str) -> str:
    """A sample's family: its name without the one suffix the client library added."""
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_the_check_would_catch_a_renamed_metric(exported):
    assert used(["rate(xray_screen_file_total[5m])"]) - exported == {"xray_screen_file_total"}
