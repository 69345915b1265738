"""The webhook dispatcher's counts (``worker/notify/queue.py``), read at each scrape.

- ``xray_screen_notifications_total{event,outcome}``: notifications ``sent``, ``failed``
  (given up after the retries, or refused) and ``dropped`` (the queue full, or left at stop);
- ``xray_screen_notifications_queued``: waiting to be sent now.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

OUTCOMES = ("sent", "failed", "dropped")


class NotifyCollector(Collector):
    """Reads a ``Dispatcher``'s ``stats`` and queue; registers itself in ``registry``."""

    def __init__(self, dispatcher: Any, registry: CollectorRegistry):
        self.dispatcher = dispatcher
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        sent = CounterMetricFamily(
            "xray_screen_notifications",
            "Webhook notifications, by event and outcome (sent, failed, dropped).",
            labels=["event", "outcome"],
        )
        stats = self.dispatcher.counts()
        for event in sorted(self.dispatcher.events):
            for outcome in OUTCOMES:
                sent.add_metric([event, outcome], stats.get((outcome, event), 0))
        yield sent
        yield GaugeMetricFamily(
            "xray_screen_notifications_queued",
            "Webhook notifications waiting to be sent.",
            value=self.dispatcher.queued,
        )
