"""``PipelineMetrics``: what ``watch`` and ``scan`` screened, as Prometheus metrics.

An observer of the pipeline (``worker/pipeline/observe.py``): one ``committed`` call per
batch updates every counter and histogram, so the loops pay for metrics once per batch.

- ``xray_screen_files_total{outcome}``: files committed, by outcome (each has an audit row);
- ``xray_screen_predictions_total{label,positive}``: files the model judged (outcome
  ``screened``: each has a result row), by label;
- ``xray_screen_decode_seconds``, ``xray_screen_inference_seconds``: per screened file, its
  decoding, and its share of its batch's model time;
- ``xray_screen_commit_seconds``: per batch, the transaction;
- ``xray_screen_latency_seconds``: per inbox file, from its arrival (its modification time:
  the drop, or the receiver's write of a C-STORE) to its commit;
- ``xray_screen_last_batch_timestamp_seconds``; ``xray_screen_model_info``; and, given the
  daemon, ``xray_screen_inbox_backlog_files`` and ``xray_screen_claimed_files``.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from worker.outcome import Outcome
from worker.pipeline.observe import Committed, Observer

FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 86400.0)


class PipelineMetrics(Observer):
    """The pipeline's metrics in ``registry``; ``committed(batch)`` once per committed batch."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.files = Counter(
            "xray_screen_files", "Files committed, by outcome.", ["outcome"], registry=registry
        )
        for outcome in Outcome:
            self.files.labels(outcome.value)  # every outcome from 0, so rate() works at once
        self.predictions = Counter(
            "xray_screen_predictions",
            "Files the model judged (outcome screened), by label.",
            ["label", "positive"],
            registry=registry,
        )
        self.decode = Histogram(
            "xray_screen_decode_seconds", "Decoding one screened file.", buckets=FAST, registry=registry
        )
        self.inference = Histogram(
            "xray_screen_inference_seconds",
            "One screened file's share of its batch's model time.",
            buckets=FAST,
            registry=registry,
        )
        self.commit = Histogram(
            "xray_screen_commit_seconds", "Committing one batch.", buckets=COMMIT, registry=registry
        )
        self.latency = Histogram(
            "xray_screen_latency_seconds",
            "From an inbox file's arrival (its modification time) to its commit.",
            buckets=LATENCY,
            registry=registry,
        )
        self.last_batch = Gauge(
            "xray_screen_last_batch_timestamp_seconds",
            "When the last batch was committed (Unix time).",
            registry=registry,
        )
        self.model = Info("xray_screen_model", "The model screening.", registry=registry)

    # -- once ----------------------------------------------------------------------

    def describe_model(self, model: Any, *, labels: list[str] | tuple[str, ...] = ()) -> None:
        """The model as labels of ``xray_screen_model_info``; its labels' counters from 0."""
        profile = (getattr(model, "metadata", {}).get("site_profile") or {}).get("name") or ""
        self.model.info(
            {
                "name": str(model.name),
                "version": str(model.version or ""),
                "sha256": str(model.sha256)[:12],
                "site_profile": str(profile),
                # a bundle's fp32/int8/fp16, or "learner" for an export.pkl on torch
                "variant": str(getattr(model, "variant", "learner")),
            }
        )
        for label in labels or model.vocab:
            self.predictions.labels(label, _bool(label == model.positive_class))

    def track_daemon(self, backlog: Callable[[], float], claimed: Callable[[], float]) -> None:
        """The daemon's queues, read at each scrape."""
        Gauge(
            "xray_screen_inbox_backlog_files",
            "Files seen in the inbox, not yet claimed.",
            registry=self.registry,
        ).set_function(backlog)
        Gauge(
            "xray_screen_claimed_files", "Files claimed, not yet filed.", registry=self.registry
        ).set_function(claimed)

    # -- per batch -----------------------------------------------------------------

    def committed(self, batch: Committed) -> None:
        outcomes: Tally[str] = Tally()
        labels: Tally[tuple[str, str]] = Tally()
        for item in batch.items:
            outcomes[item.outcome] += 1
            if item.outcome is Outcome.SCREENED:
                labels[(item.label, _bool(item.positive))] += 1
                prediction = item.prediction
                if prediction is not None:
                    self.decode.observe(prediction.decode_ms / 1000)
                    self.inference.observe(prediction.infer_ms / 1000)
            if item.queued_at is not None:  # an inbox file: its arrival is its mtime
                self.latency.observe(max(0.0, batch.at - _arrival(item)))
        for outcome, n in outcomes.items():
            self.files.labels(str(outcome)).inc(n)
        for (label, positive), n in labels.items():
            self.predictions.labels(label, positive).inc(n)
        self.commit.observe(batch.commit_seconds)
        self.last_batch.set(batch.at)


def _arrival(item: Any) -> float:
    """When an inbox file arrived: its modification time (the claim keeps it), else its claim."""
    try:
        return item.path.stat().st_mtime
    except OSError:
        return float(item.queued_at.timestamp())


def _bool(value: bool) -> str:
    return "true" if value else "false"
