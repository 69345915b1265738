"""The daemon's single-file latency, and its memory with a huge backlog.

    python bench/daemon_latency.py [--files 10] [--backlog 100000] [--backlog-seconds 90]

1. Latency: the real `xray-worker watch` (shipped model, SQLite, local inbox, default 2 s
   stability window) idles; one real full-resolution JPEG at a time is dropped in (written
   elsewhere, then renamed in, as a finished copy) and the time until its audit row is
   committed is measured. Target: within the stability window + 1 s.
2. Memory: BACKLOG files (hard links to real JPEGs, so the disk holds one copy each) wait
   in the inbox when the daemon starts; its resident memory is sampled while it works
   through them. Target: flat.

Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("XRAY_SCREEN_DATA", ROOT.parent / "shared" / "data"))
EXE = Path(sys.executable).with_name("xray-worker")


def start(work: Path, log_name: str) -> subprocess.Popen:
    db = f"sqlite:///{work / 'results.db'}"
    subprocess.run([EXE, "db", "upgrade", "--db", db], check=True, capture_output=True)
    log = (work / log_name).open("wb")
    proc = subprocess.Popen(
        [
            EXE,
            "watch",
            "--inbox",
            work / "inbox",
            "--processed",
            work / "processed",
            "--failed",
            work / "failed",
            "--db",
            db,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while "ready: screening" not in (work / log_name).read_text(errors="replace"):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit((work / log_name).read_text())
        time.sleep(0.1)
    return proc


def audit_count(work: Path) -> int:
    with sqlite3.connect(work / "results.db") as conn:
        return conn.execute("select count(*) from audit_events").fetchone()[0]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def latency(files: list[Path]) -> list[float]:
    work = Path(tempfile.mkdtemp(prefix="xray-latency-"))
    (work / "inbox").mkdir()
    (work / "staging").mkdir()
    proc = start(work, "latency.log")
    times = []
    try:
        for i, f in enumerate(files):
            time.sleep(1.0)  # idle between files
            staged = work / "staging" / f.name
            shutil.copy(f, staged)
            t0 = time.monotonic()
            staged.rename(work / "inbox" / f.name)
            while audit_count(work) < i + 1:
                time.sleep(0.01)
            times.append(time.monotonic() - t0)
            print(f"  file {i + 1}: {times[-1]:.2f} s", file=sys.stderr, flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    return times


def backlog_memory(
    sources: list[Path], n: int, seconds: float
) -> tuple[list[tuple[float, int, float]], float]:
    work = Path(tempfile.mkdtemp(prefix="xray-backlog-"))
    inbox = work / "inbox"
    inbox.mkdir()
    t = time.monotonic()
    for i in range(n):
        src = sources[i % len(sources)]
        os.link(src, inbox / f"{i:06d}-{src.name}")
    made = time.monotonic() - t
    print(f"  {n} files linked into the inbox in {made:.1f} s", file=sys.stderr, flush=True)
    proc = start(work, "backlog.log")
    samples = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            samples.append((time.monotonic() - t0, audit_count(work), rss_mib(proc.pid)))
            print(
                f"  {samples[-1][0]:5.0f} s: {samples[-1][1]:6d} files done, RSS {samples[-1][2]:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(seconds / 12)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        shutil.rmtree(work, ignore_errors=True)
    return samples, made


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--backlog-seconds", type=float, default=90)
    args = parser.parse_args()
    jpegs = sorted((DATA / "chest_xray_full").rglob("*.jpeg"))
    times = latency(jpegs[: args.files])
    p95 = sorted(times)[max(0, round(0.95 * len(times)) - 1)]
    print("\n### Single-file latency (idle local inbox, stability window 2 s, shipped model, SQLite)\n")
    print(
        f"{len(times)} files, drop to committed result: median {statistics.median(times):.2f} s, "
        f"p95 {p95:.2f} s, max {max(times):.2f} s (target: 3.0 s)"
    )
    samples, linking = backlog_memory(jpegs, args.backlog, args.backlog_seconds)
    print(
        f"\n### Memory with {args.backlog:,} files waiting (hard links to {len(jpegs)} real JPEGs, "
        f"made in {linking:.0f} s)\n"
    )
    print("| seconds since ready | files done | RSS MiB |")
    print("|---|---|---|")
    for t, done, rss in samples:
        print(f"| {t:.0f} | {done} | {rss:.0f} |")
    rss = [s[2] for s in samples[1:]]
    print(f"\nRSS from the first sample on: min {min(rss):.0f} MiB, max {max(rss):.0f} MiB.")


if __name__ == "__main__":
    main()
