"""``Monitoring``: the metrics endpoint and the webhook dispatcher of one command, and the
observers that feed them, built from the settings by ``worker/app.py``.

A long-running command (watch, receive, send) opens one with ``Monitoring.open(stack,
settings)``: the ``[metrics] listen`` endpoint (none when empty) and, for watch, the
``[notify]`` dispatcher (none without webhooks), both closed with the stack: the endpoint
first, then the dispatcher, flushed within ``[notify] flush_seconds``.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from worker.config import Settings
from worker.metrics.endpoint import Endpoint, registry
from worker.metrics.notify import NotifyCollector
from worker.metrics.receiver import ReceiverMetrics
from worker.metrics.sender import SenderMetrics
from worker.notify import Dispatcher, open_dispatcher


@dataclass
class Monitoring:
    """A command's metrics ``registry`` (None: off) and webhook ``dispatcher`` (None: none)."""

    registry: CollectorRegistry | None = None
    dispatcher: Dispatcher | None = None
    endpoint: Endpoint | None = None

    @classmethod
    def open(cls, stack: ExitStack, settings: Settings, *, notify: bool = True) -> Monitoring:
        """The endpoint of ``[metrics] listen`` and, with ``notify`` (the commands that send
        notifications: watch), the ``[notify]`` dispatcher; both closed with ``stack``."""
        dispatcher = open_dispatcher(settings) if notify else None
        if dispatcher is not None:
            stack.callback(dispatcher.close)
        if not settings.metrics.listen:
            return cls(None, dispatcher)
        found = registry(process=True)
        if dispatcher is not None:
            NotifyCollector(dispatcher, found)
        endpoint = Endpoint.start(settings.metrics.listen, found)
        stack.callback(endpoint.close)
        return cls(found, dispatcher, endpoint)

    def pipeline(self, model: Any, *, worker: str = "") -> tuple[Any, Any]:
        """The observer of a daemon screening with ``model`` (an ``Observers``), and its
        ``PipelineMetrics`` (None: off), whose ``track_daemon`` the caller binds once the daemon
        exists. (The pipeline's modules are imported here: receive and send need none.)"""
        from worker.metrics.pipeline import PipelineMetrics
        from worker.notify.events import NotifyObserver
        from worker.pipeline.observe import Observer, Observers

        observers: list[Observer] = []
        metrics = None
        if self.registry is not None:
            metrics = PipelineMetrics(self.registry)
            metrics.describe_model(model)
            observers.append(metrics)
        if self.dispatcher is not None:
            observers.append(NotifyObserver(self.dispatcher, worker=worker, model=model))
        return Observers(observers), metrics

    def receiver(self, active: Any) -> ReceiverMetrics | None:
        """The DICOM receiver's observer (None: metrics off); ``active()``: connections open."""
        return ReceiverMetrics(self.registry, active=active) if self.registry is not None else None

    def sender(self, destinations: list[str], backlog: Any) -> SenderMetrics | None:
        """The PACS sender's observer (None: metrics off); ``backlog()``: the outbox now."""
        if self.registry is None:
            return None
        return SenderMetrics(self.registry, destinations, backlog=backlog)
