"""The DICOM receiver: how fast it takes instances, and how soon one is screened.

    python bench/receive.py [--instances 200] [--latency 30] [--stability 2]

1. Throughput: `xray-worker receive` on loopback; DCMTK's `storescu` sends the 16 RSNA
   files of ../shared/data/dicom (JPEG baseline, about 120 kB each), repeated to INSTANCES
   instances, in one association. Each instance is written, fsynced, parsed back and renamed
   before its Success (worker/receive/store.py). Three runs; the median.
2. End-to-end latency: the receiver and `xray-worker watch` (shipped model, SQLite, the
   stability window of --stability seconds) on one inbox; LATENCY distinct instances (the
   RSNA files with new SOP Instance UIDs, so each is screened, none a duplicate), one
   storescu association each, one after the other; the time from starting storescu to the
   instance's committed audit row. Median and p95.

Needs DCMTK (storescu). Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("XRAY_SCREEN_DATA", ROOT.parent / "shared" / "data"))
EXE = Path(sys.executable).with_name("xray-worker")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[object], log: Path, ready: str, timeout: float = 180) -> subprocess.Popen:
    with log.open("wb") as fh:
        proc = subprocess.Popen([EXE, *args], stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while ready not in log.read_text(errors="replace"):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(log.read_text())
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def storescu(port: int, files: list[Path]) -> float:
    """Seconds storescu took to send ``files`` in one association (all must succeed)."""
    started = time.perf_counter()
    done = subprocess.run(
        ["storescu", "-xy", "-aec", "XRAY_SCREEN", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)
    return seconds


def throughput(work: Path, rsna: list[Path], instances: int) -> tuple[float, float]:
    files = (rsna * (instances // len(rsna) + 1))[:instances]
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    runs = []
    for run in range(3):
        inbox = work / f"inbox-throughput-{run}"
        port = free_port()
        receiver = start(
            ["receive", "--inbox", inbox, "--port", str(port), "--secondary-capture"],
            work / f"receive-{run}.log",
            "receiving as ",
        )
        try:
            runs.append(storescu(port, files))
        finally:
            stop(receiver)
        assert len(list(inbox.glob("*.dcm"))) == instances
    seconds = statistics.median(runs)
    return instances / seconds, megabytes / seconds


def variants(rsna: list[Path], n: int, folder: Path) -> list[tuple[Path, str]]:
    """``n`` distinct instances: the RSNA files with new SOP Instance UIDs."""
    folder.mkdir()
    out = []
    for i in range(n):
        ds = pydicom.dcmread(rsna[i % len(rsna)])
        uid = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append((path, uid))
    return out


def latency(work: Path, rsna: list[Path], n: int, stability: float) -> list[float]:
    db = work / "results.db"
    subprocess.run([EXE, "db", "upgrade", "--db", f"sqlite:///{db}"], check=True, capture_output=True)
    inbox = work / "inbox"
    port = free_port()
    receiver = start(
        ["receive", "--inbox", inbox, "--port", str(port), "--secondary-capture"],
        work / "receive.log",
        "receiving as ",
    )
    watch = start(
        [
            "watch",
            *("--inbox", inbox, "--processed", work / "processed", "--failed", work / "failed"),
            *("--db", f"sqlite:///{db}", "--set", f"inbox.stability_seconds={stability}"),
        ],
        work / "watch.log",
        "ready: screening",
    )
    times = []
    try:
        for path, uid in variants(rsna, n, work / "variants"):
            started = time.perf_counter()
            storescu(port, [path])
            while not _committed(db, f"{uid}.dcm"):
                if time.perf_counter() - started > 120:
                    raise SystemExit((work / "watch.log").read_text()[-3000:])
                time.sleep(0.01)
            times.append(time.perf_counter() - started)
    finally:
        stop(watch)
        stop(receiver)
    return times


def _committed(db: Path, name: str) -> bool:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT outcome FROM audit_events WHERE source_path LIKE ?", (f"%/{name}",)
        ).fetchone()
    return row is not None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--latency", type=int, default=30, help="instances timed end to end")
    parser.add_argument("--stability", type=float, default=2.0, help="watch's stability window (s)")
    args = parser.parse_args()
    if shutil.which("storescu") is None:
        raise SystemExit("DCMTK's storescu is needed (apt-get install dcmtk)")
    rsna = sorted((DATA / "dicom").glob("00*.dcm"))
    with tempfile.TemporaryDirectory(prefix="bench-receive-") as tmp:
        work = Path(tmp)
        per_second, mb_per_second = throughput(work, rsna, args.instances)
        times = latency(work, rsna, args.latency, args.stability)
    p95 = statistics.quantiles(times, n=20)[-1]
    print(f"## DICOM receiver ({os.cpu_count()} CPUs, loopback, DCMTK storescu)\n")
    print("| measure | value |\n|---|---|")
    print(
        f"| receive throughput, {args.instances} RSNA instances, one association | "
        f"{per_second:.0f} instances/s ({mb_per_second:.1f} MB/s) |"
    )
    print(
        f"| C-STORE -> committed row, median of {len(times)} (stability {args.stability:g} s) | "
        f"{statistics.median(times):.2f} s |"
    )
    print(f"| C-STORE -> committed row, p95 | {p95:.2f} s |")


if __name__ == "__main__":
    main()
