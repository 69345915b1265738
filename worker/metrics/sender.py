"""``xray-worker send``'s metrics: the sender's observer (``worker/pacs/sender.py``), and the
outbox read at each scrape.

- ``xray_screen_send_objects_total{destination,outcome}``: objects ``sent`` (stored by the
  PACS), ``retried`` (to be tried again) and ``failed`` (given up on);
- ``xray_screen_send_batch_seconds``: one batch to one destination (association included);
- ``xray_screen_outbox_objects{destination,status}``: the outbox now: ``pending``, ``due``
  (pending and due now), ``awaiting_commitment``, ``failed``;
- ``xray_screen_outbox_oldest_pending_timestamp_seconds{destination}``: the oldest pending
  object's creation (Unix time), absent when none is pending.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.errors import TransientError

log = logging.getLogger(__name__)
BATCH = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
STATUSES = ("pending", "due", "awaiting_commitment", "failed")


class SenderMetrics:
    """The sender's counters in ``registry``, and the outbox's gauges from ``backlog()``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        destinations: Sequence[str] = (),
        backlog: Callable[[], Sequence[Any]] | None = None,
    ):
        self.objects = Counter(
            "xray_screen_send_objects",
            "Objects delivered to PACS: sent, retried, failed.",
            ["destination", "outcome"],
            registry=registry,
        )
        for name in destinations:
            for outcome in ("sent", "retried", "failed"):
                self.objects.labels(name, outcome)
        self.seconds = Histogram(
            "xray_screen_send_batch_seconds",
            "One batch to one destination.",
            buckets=BATCH,
            registry=registry,
        )
        if backlog is not None:
            registry.register(OutboxCollector(backlog))

    def batch(self, destination: str, *, sent: int, retried: int, failed: int, seconds: float) -> None:
        for outcome, n in (("sent", sent), ("retried", retried), ("failed", failed)):
            if n:
                self.objects.labels(destination, outcome).inc(n)
        self.seconds.observe(seconds)


class OutboxCollector(Collector):
    """The outbox by destination and status, one query per scrape; nothing while the
    database is unavailable (the sender logs that itself)."""

    def __init__(self, backlog: Callable[[], Sequence[Any]]):
        self.backlog = backlog

    def describe(self) -> Iterator[Metric]:
        """The names, without a query (the registry asks when the collector is registered)."""
        yield from _families()

    def collect(self) -> Iterator[Metric]:
        try:
            rows = self.backlog()
        except TransientError as exc:
            log.debug("outbox metrics skipped: %s", exc)
            return
        objects, oldest = _families()
        for row in rows:
            for status in STATUSES:
                objects.add_metric([row.destination, status], getattr(row, status))
            if row.oldest_pending is not None:
                oldest.add_metric([row.destination], row.oldest_pending.timestamp())
        yield objects
        yield oldest


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    objects = GaugeMetricFamily(
        "xray_screen_outbox_objects",
        "Outbox objects by destination and status.",
        labels=["destination", "status"],
    )
    oldest = GaugeMetricFamily(
        "xray_screen_outbox_oldest_pending_timestamp_seconds",
        "When the oldest pending object was queued (Unix time).",
        labels=["destination"],
    )
    return objects, oldest
