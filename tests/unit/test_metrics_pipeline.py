"""The pipeline's metrics (worker/metrics/pipeline.py) on the real daemon and scan over the
in-memory fakes: the counters say what the store recorded, one observer call per batch."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest
from fakes import FakePredictor, MemoryStore, film
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.daemon import Daemon
from worker.metrics.pipeline import PipelineMetrics
from worker.pipeline.observe import Committed, Observer, Observers
from worker.scan.local import Scanner
from worker.sinks.filer import Folders
from worker.sources.claim import WorkArea
from worker.sources.inbox import Inbox
from worker.sources.walk import FileFilter, walk_files


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry's exposition, parsed back as Prometheus reads it."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


class Counting(Observer):
    def __init__(self) -> None:
        self.batches: list[int] = []

    def committed(self, batch: Committed) -> None:
        self.batches.append(len(batch.items))


class Exploding(Observer):
    def committed(self, batch: Committed) -> None:
        raise RuntimeError("a metrics bug")


def drop_films(inbox: Path) -> None:
    (inbox / "a.png").write_bytes(film("PNEUMONIA", 0.9))
    (inbox / "b.png").write_bytes(film("NORMAL", 0.1))
    (inbox / "c.png").write_bytes(film("NORMAL", 0.2))
    (inbox / "twin.png").write_bytes(film("PNEUMONIA", 0.9))
    (inbox / "mr.png").write_bytes(b"MR\n")
    (inbox / "notes.txt").write_bytes(b"hello\n")
    old = time.time() - 30  # dropped 30 s ago: the latency counts from the drop
    for path in inbox.iterdir():
        os.utime(path, (old, old))


@pytest.fixture
def site(tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    drop_films(inbox)
    return tmp_path, inbox


def test_daemon_metrics_equal_what_the_store_recorded(site):
    root, inbox = site
    store, predictor, registry = MemoryStore(), FakePredictor(), CollectorRegistry()
    metrics, counting = PipelineMetrics(registry), Counting()
    metrics.describe_model(predictor.model)
    daemon = Daemon(
        inbox=Inbox(inbox, stability_seconds=0, rescan_interval=0),
        work=WorkArea(inbox, "w1"),
        predictor=predictor,
        store=store,
        folders=Folders(root / "processed", root / "failed"),
        batch_size=4,
        max_wait=0,
        worker_host="t",
        observer=Observers([Exploding(), metrics, counting]),  # a broken observer harms nothing
    )
    metrics.track_daemon(daemon.inbox.backlog, lambda: daemon.claimed)
    daemon.recover()
    for _ in range(4):
        daemon.step()
    found = samples(registry)

    by_outcome = Counter(a.outcome for a in store.audits.values())
    assert sum(by_outcome.values()) == 6
    for outcome in ("screened", "duplicate", "failed", "out_of_scope"):
        assert value(found, "xray_screen_files_total", outcome=outcome) == by_outcome[outcome], outcome
    by_label = Counter(r.label for r in store.results.values())
    assert (
        value(found, "xray_screen_predictions_total", label="PNEUMONIA", positive="true")
        == by_label["PNEUMONIA"]
    )
    assert value(found, "xray_screen_predictions_total", label="NORMAL", positive="false") == 2
    assert value(found, "xray_screen_decode_seconds_count") == sum(by_label.values())
    assert value(found, "xray_screen_commit_seconds_count") == len(counting.batches) == 1
    assert counting.batches == [6]  # one observer call for the whole batch
    assert value(found, "xray_screen_latency_seconds_count") == 6
    assert value(found, "xray_screen_latency_seconds_bucket", le="10.0") == 0  # dropped 30 s ago
    assert value(found, "xray_screen_latency_seconds_bucket", le="60.0") == 6
    assert time.time() - value(found, "xray_screen_last_batch_timestamp_seconds") < 60
    assert (
        value(found, "xray_screen_claimed_files") == 0
        and value(found, "xray_screen_inbox_backlog_files") == 0
    )
    info = {k: v for (name, labels), v in found.items() if name == "xray_screen_model_info" for k in [labels]}
    assert dict(next(iter(info))) == {
        "name": "fake-model",
        "version": "1",
        "sha256": "f" * 12,
        "site_profile": "",
        "variant": "learner",  # a model that is no bundle: an export.pkl on torch
    }


def test_the_backlog_gauges_read_the_daemon_at_scrape_time(site):
    root, inbox = site
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    daemon = Daemon(
        inbox=Inbox(inbox, stability_seconds=0, rescan_interval=0),
        work=WorkArea(inbox, "w1"),
        predictor=FakePredictor(),
        store=MemoryStore(),
        folders=Folders(root / "processed", root / "failed"),
        batch_size=100,
        max_wait=3600,  # a batch waits for more: what is claimed stays claimed
        worker_host="t",
    )
    metrics.track_daemon(daemon.inbox.backlog, lambda: daemon.claimed)
    daemon.step()
    found = samples(registry)
    assert value(found, "xray_screen_claimed_files") == 6
    assert value(found, "xray_screen_inbox_backlog_files") == 0


def test_scan_metrics_equal_what_the_store_recorded(tmp_path: Path):
    archive = tmp_path / "archive"
    archive.mkdir()
    drop_films(archive)
    store, registry = MemoryStore(), CollectorRegistry()
    metrics = PipelineMetrics(registry)
    scanner = Scanner(
        files=walk_files([archive], FileFilter()),
        predictor=FakePredictor(),
        store=store,
        worker_host="t",
        observer=metrics,
    )
    scanner.run()
    found = samples(registry)
    by_outcome = Counter(a.outcome for a in store.audits.values())
    for outcome in ("screened", "duplicate", "failed", "out_of_scope"):
        assert value(found, "xray_screen_files_total", outcome=outcome) == by_outcome[outcome], outcome
    assert value(found, "xray_screen_latency_seconds_count") == 0  # a scan's files were not dropped
