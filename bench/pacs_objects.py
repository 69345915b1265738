"""What the PACS objects cost: building the SR and the key image of one film.

    python bench/pacs_objects.py [--repeats 5]

For each of the 19 films of ../shared/data/dicom: the Comprehensive SR (header read with
stop_before_pixels, build, serialise to Part 10 bytes) and the Secondary Capture key image
(an RGB overlay the size of the film, build, serialise). The film's decoding and the overlay
are not timed: the heatmap stage has them already. Each build is repeated REPEATS times and
the fastest kept (the machine is shared); the table gives the median over the films, and the
slowest film. Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("XRAY_SCREEN_DATA", ROOT.parent / "shared" / "data"))

from worker.decode import decode_file  # noqa: E402
from worker.pacs.objects import Screening, build_key_image, build_report, to_bytes  # noqa: E402

SCREENING = Screening(
    positive=True,
    probability=0.87,
    threshold=0.5,
    model_name="pneumonia-resnet18",
    model_version="1",
    model_sha256="a1" * 32,
    site_profile="default",
)
CREATED = datetime(2024, 12, 2, 10, 30)


def best_of(repeats: int, work: Callable[[], bytes]) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        size = len(work())
        times.append(time.perf_counter() - start)
    return min(times), size


def report(path: Path) -> bytes:
    source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return to_bytes(build_report(source, SCREENING, CREATED))


def key_image(source: pydicom.Dataset, overlay: np.ndarray) -> bytes:
    return to_bytes(build_key_image(source, overlay, SCREENING, CREATED))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for path in sorted((DATA / "dicom").glob("*.dcm")):
        grey = decode_file(path).pixels
        overlay = np.stack([grey, grey, grey // 2], axis=-1)

        source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        sr_s, sr_bytes = best_of(args.repeats, partial(report, path))
        sc_s, sc_bytes = best_of(args.repeats, partial(key_image, source, overlay))
        rows.append((path.name, grey.shape, sr_s, sr_bytes, sc_s, sc_bytes))
    print("| object | median per film | slowest film | size (median) |\n|---|---|---|---|")
    for label, t, b in (
        ("SR (read header, build, serialise)", 2, 3),
        ("SC key image (build, serialise)", 4, 5),
    ):
        slowest = max(rows, key=lambda r: r[t])
        print(
            f"| {label} | {statistics.median(r[t] for r in rows) * 1000:.1f} ms "
            f"| {slowest[t] * 1000:.1f} ms ({slowest[0]}, {slowest[1][1]}x{slowest[1][0]}) "
            f"| {statistics.median(r[b] for r in rows) / 1024:.0f} kB |"
        )
    print(f"\n{len(rows)} films, best of {args.repeats} each, {os.cpu_count()} CPUs (shared).")


if __name__ == "__main__":
    main()
