"""What Prometheus metrics cost a scan: the same scan with metrics off and on, alternating.

    python bench/metrics_cost.py [--files 300] [--rounds 4] [--batch-size 64]

Each round screens the same FILES real full-resolution X-rays (chest_xray_full/train, both
classes) into a fresh SQLite database with the shipped model on the CPU, once without an
observer (off) and once with ``PipelineMetrics`` (on), the order alternating from round to
round (off-on, on-off, ...) so that drift on a shared machine falls on both; a first,
uncounted scan warms the page cache. Prints each round, the medians and their ratio.

Then the observer alone: ``PipelineMetrics.committed`` timed on a batch of BATCH_SIZE daemon
items (real files, so the latency's stat() is paid), against that batch's screening time
from the scans above: the metrics' share of the work, measured directly.

Prints Markdown for BENCHMARKS.md. Target: metrics cost under 1% of throughput.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
import timeit
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from worker.app import open_predictor, open_store
from worker.config import PROJECT_ROOT, SHIPPED_MODEL_SHA256, load_settings
from worker.metrics.pipeline import PipelineMetrics
from worker.outcome import Outcome
from worker.pipeline.item import Item
from worker.pipeline.observe import Committed
from worker.scan.local import Scanner
from worker.sources.walk import FileFilter, walk_files

DATA = Path(os.environ.get("XRAY_SCREEN_DATA", PROJECT_ROOT.parent / "shared" / "data"))
SHIPPED = PROJECT_ROOT / "models" / "pneumonia-resnet18" / "export.pkl"


def corpus(n: int, folder: Path) -> Path:
    """``n`` real films, half of each class, copied into ``folder``."""
    folder.mkdir(parents=True)
    train = DATA / "chest_xray_full" / "train"
    per_class = [sorted((train / label).glob("*.jpeg"))[: (n + 1) // 2] for label in ("NORMAL", "PNEUMONIA")]
    for path in [p for pair in zip(*per_class, strict=False) for p in pair][:n]:
        shutil.copy(path, folder / path.name)
    return folder


def scan(settings_at, predictor, files: Path, work: Path, label: str, metrics: bool) -> float:
    """One scan into a new database; its images per second."""
    settings = settings_at(f"sqlite:///{work / f'{label}.db'}")
    store = open_store(settings)
    observer = PipelineMetrics(CollectorRegistry()) if metrics else None
    scanner = Scanner(
        files=walk_files([files], FileFilter()),
        predictor=predictor,
        store=store,
        worker_host="bench",
        observer=observer,
    )
    started = time.perf_counter()
    counts = scanner.run()
    seconds = time.perf_counter() - started
    store.close()
    assert counts.handled == len(list(files.iterdir())), counts
    return counts.handled / seconds


def observer_cost(files: Path, batch_size: int) -> float:
    """Microseconds of one ``committed`` call on a batch of screened daemon items."""
    paths = sorted(files.iterdir())[:batch_size]

    class Screened:  # what the observer reads of a Prediction
        decode_ms, infer_ms = 40.0, 30.0

    items = []
    for path in paths:
        item = Item(path=path, name=str(path), queued_at=datetime.now(UTC))
        item.outcome, item.label, item.prediction = Outcome.SCREENED, "NORMAL", Screened()
        items.append(item)
    metrics = PipelineMetrics(CollectorRegistry())
    batch = Committed(items, commit_seconds=0.01)
    runs = timeit.repeat(lambda: metrics.committed(batch), number=50, repeat=5)
    return min(runs) / 50 * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # not a line per batch, nor "created the database"
    work = Path(tempfile.mkdtemp(prefix="xray-metrics-cost-"))
    files = corpus(args.files, (work / "corpus"))
    base = {
        "model.path": str(SHIPPED),
        "model.sha256": SHIPPED_MODEL_SHA256,
        "inference.device": "cpu",
        "inference.batch_size": str(args.batch_size),
    }

    def settings_at(url: str):
        return load_settings(None, environ={}, overrides={**base, "database.url": url})

    predictor = open_predictor(settings_at(f"sqlite:///{work / 'unused.db'}"))
    predictor.warm_up()
    scan(settings_at, predictor, files, work, "warm-up", metrics=False)
    rates: dict[bool, list[float]] = {False: [], True: []}
    print("| round | order | off (images/s) | on (images/s) |\n|---|---|---|---|")
    for n in range(args.rounds):
        order = (False, True) if n % 2 == 0 else (True, False)
        for metrics in order:
            rates[metrics].append(scan(settings_at, predictor, files, work, f"r{n}-{metrics}", metrics))
        words = " then ".join("on" if m else "off" for m in order)
        print(f"| {n + 1} | {words} | {rates[False][-1]:.1f} | {rates[True][-1]:.1f} |")
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"\nmedians: off {off:.1f} images/s, on {on:.1f} images/s, on/off {on / off:.3f}")
    micros = observer_cost(files, args.batch_size)
    batch_seconds = args.batch_size / off
    print(
        f"observer: {micros:.0f} us per batch of {args.batch_size} "
        f"({micros / args.batch_size:.1f} us per file), against {batch_seconds * 1000:.0f} ms to screen "
        f"the batch: {micros / 1e6 / batch_seconds:.4%} of the work"
    )


if __name__ == "__main__":
    main()
