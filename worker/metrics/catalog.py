"""Every metric name the code exports, as Prometheus sees it (with ``_total``, ``_bucket``,
``_count``, ``_sum``, ``_info`` ...): what docs/monitoring.md, the Grafana dashboard and the
alert rules may use (tests/unit/test_metrics_docs.py holds them to it)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from worker.metrics.endpoint import registry as new_registry
from worker.metrics.notify import NotifyCollector
from worker.metrics.pipeline import PipelineMetrics
from worker.metrics.receiver import ReceiverMetrics
from worker.metrics.sender import SenderMetrics
from worker.metrics.textfile import ScanSummary


def exported_names() -> set[str]:
    """The sample names of every metric, built in throwaway registries with one value each."""
    names: set[str] = set()
    watch = new_registry(process=True)
    pipeline = PipelineMetrics(watch)
    pipeline.track_daemon(lambda: 0, lambda: 0)
    pipeline.model.info({"name": "", "version": "", "sha256": "", "site_profile": "", "variant": ""})
    pipeline.predictions.labels("X", "false")
    pipeline.decode.observe(0)
    pipeline.inference.observe(0)
    pipeline.commit.observe(0)
    pipeline.latency.observe(0)
    dispatcher = SimpleNamespace(events=frozenset({"failure"}), counts=dict, queued=0)
    NotifyCollector(dispatcher, watch)
    receive = CollectorRegistry()
    receiver = ReceiverMetrics(receive, active=lambda: 0)
    receiver.refused(0xA700)
    receiver.closed("released")
    send = CollectorRegistry()
    backlog = SimpleNamespace(
        destination="d", pending=1, due=0, awaiting_commitment=0, failed=0, oldest_pending=datetime.now(UTC)
    )
    sender = SenderMetrics(send, ["d"], backlog=lambda: [backlog])
    sender.seconds.observe(0)
    scan = ScanSummary(Path("summary.prom"), registry=CollectorRegistry())
    for registry in (watch, receive, send, scan.registry):
        for family in registry.collect():
            names.update(sample.name for sample in family.samples)
    return names
