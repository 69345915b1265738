"""Scale-out figures for docs/scale-out.md, in one run:

    python bench/scale_out.py [--copies 3] [--postgres URL]

1. `xray-worker scan` end to end on the corpus, with the local engine and with
   `--engine ray` (a local Ray instance on this machine): images/s after start-up
   (start-up measured on a one-file folder), and the total;
2. the Ray stages alone, in this process, one core each: `Prepare` (hash, decode, item
   transforms) and `Screen` (the model, 1 and all torch threads): what one CPU of a Ray
   node decodes per second, and the model's CPU rate;
3. what the driver alone can do, whatever the cluster's size: planning (walk + skip-index
   lookups, measured as a second scan of the same corpus, every file skipped) and
   committing (results + audit + index rows in batches of 64) on SQLite and PostgreSQL.

The corpus is bench/throughput.py's: the 436 chest_xray_full originals, `--copies` times,
each copy with distinct bytes after the JPEG end marker (so no copy is a duplicate).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).with_name("xray-worker")


def timed(args: list) -> float:
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{args[1:4]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return time.perf_counter() - start


def fresh_db(url: str) -> str:
    subprocess.run([EXE, "db", "upgrade", "--db", url], check=True, capture_output=True)
    return url


def scan_rates(corpus: Path, work: Path, engine: str) -> dict:
    one = work / f"one-{engine}"
    one.mkdir()
    shutil.copy(next(corpus.iterdir()), one / "single.jpeg")
    db = fresh_db(f"sqlite:///{work / f'{engine}.db'}")
    extra = ["--engine", engine]
    startup = timed([EXE, "scan", one, "--db", db, *extra])
    total = timed([EXE, "scan", corpus, "--db", db, *extra])
    n = sum(1 for _ in corpus.iterdir())
    return {"startup": startup, "total": total, "rate": n / (total - startup), "n": n}


def planning_rates(corpus: Path, work: Path, url: str, files: int = 50_000) -> dict:
    """The driver's walk + skip-index lookups over ``files`` hard links, first with an empty
    index (every file is new), then with every file indexed (a nightly run: all skipped)."""
    from types import SimpleNamespace

    from worker.db.store import ScannedRecord, Store, chunks
    from worker.scan.ray.driver import RayScanner
    from worker.sources.walk import walk_files

    tree = work / "links"
    sources = sorted(corpus.iterdir())
    for i in range(files):
        folder = tree / f"{i // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(sources[i % len(sources)], folder / f"{i:06d}.jpeg")
    store = Store(url)
    model = SimpleNamespace(sha256=hashlib.sha256(b"bench model").hexdigest())
    screening = SimpleNamespace(model=model, block_files=256)

    def plan() -> float:
        scanner = RayScanner(files=walk_files([tree]), screening=screening, store=store, worker_host="bench")
        start = time.perf_counter()
        scanner._plan()
        return files / (time.perf_counter() - start)

    new = plan()
    for chunk in chunks(walk_files([tree]), 500):
        rows = [ScannedRecord(str(f.path), model.sha256, f.size, f.mtime_ns, None, "failed") for f in chunk]
        store.record_batch([], [], rows)
    indexed = plan()
    store.close()
    shutil.rmtree(tree)
    return {"new": new, "indexed": indexed, "files": files}


def stage_rates(corpus: Path, work: Path) -> dict:
    """Prepare and Screen in this process, without Ray: the work of one actor."""
    import numpy as np
    import torch

    from worker.config import InferenceSettings, ModelSettings
    from worker.decode import DEFAULT_LIMITS
    from worker.model.learner import load_model
    from worker.scan.ray.stages import Prepare, Screen, StageSpec

    m = ModelSettings()
    model = load_model(m.path, sha256=m.expected_sha256())
    db = fresh_db(f"sqlite:///{work / 'stages.db'}")
    files = sorted(corpus.iterdir())[:436]
    out = {}
    for threads in (1, os.cpu_count() or 1):
        torch.set_num_threads(threads)
        spec = StageSpec(
            str(model.path), model.sha256, model.positive_class,
            InferenceSettings(device="cpu", batch_size=64, threads=threads), DEFAULT_LIMITS, db,
        )  # fmt: skip
        prepare, screen = Prepare(spec), Screen(spec)
        prepared, seconds = [], 0.0
        for i in range(0, len(files), 64):
            chunk = files[i : i + 64]
            batch = {
                "path": np.array([str(p) for p in chunk]),
                "size": np.zeros(len(chunk), np.int64),
                "mtime_ns": np.zeros(len(chunk), np.int64),
            }
            start = time.perf_counter()
            prepared.append(prepare(batch))
            seconds += time.perf_counter() - start
        if threads == 1:
            out["prepare"] = len(files) / seconds
        start = time.perf_counter()
        for batch in prepared:
            screen(batch)
        out[f"screen_{threads}"] = len(files) / (time.perf_counter() - start)
    return out


def commit_rate(url: str, batches: int = 40, size: int = 64) -> float:
    """Rows (one result, one audit row, one index row per file) committed per second."""
    from worker.db.store import AuditRecord, ScannedRecord, Store

    store = Store(url)
    model = hashlib.sha256(b"bench model").hexdigest()
    now = datetime.now(UTC)
    times = []
    for b in range(batches):
        shas = [hashlib.sha256(f"{b}-{i}-{uuid.uuid4()}".encode()).hexdigest() for i in range(size)]
        res = [result(sha, model, now) for sha in shas]
        aud = [AuditRecord(path(s), 1000, s, "screened", "bench", "scan", model_sha256=model) for s in shas]
        idx = [ScannedRecord(path(s), model, 1000, 1, s, "screened") for s in shas]
        start = time.perf_counter()
        store.record_batch(res, aud, idx)
        times.append(time.perf_counter() - start)
    store.close()
    return size / statistics.median(times)


def path(sha: str) -> str:
    return f"/archive/{sha}.jpeg"


def result(sha: str, model: str, now: datetime):
    from worker.db.store import ResultRecord

    return ResultRecord(
        content_sha256=sha,
        label="PNEUMONIA",
        positive_class="PNEUMONIA",
        positive_probability=0.97,
        probabilities={"NORMAL": 0.03, "PNEUMONIA": 0.97},
        threshold=0.9,
        model_name="bench",
        model_version="1",
        model_sha256=model,
        preprocessing="decode-v2",
        device="cpu",
        queued_at=None,
        started_at=now,
        finished_at=now,
        inference_ms=3.0,
        image_format="JPEG",
        width=1024,
        height=1024,
    )


def postgres_db(base: str) -> tuple[str, object]:
    from sqlalchemy import create_engine, make_url

    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"bench_scale_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return make_url(base).set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    from throughput import make_corpus

    work = Path(tempfile.mkdtemp(prefix="xray-scale-out-"))
    files = make_corpus(work / "corpus", args.copies)
    print(f"corpus: {len(files)} files", file=sys.stderr, flush=True)
    local = scan_rates(work / "corpus", work, "local")
    print(f"  local: {local}", file=sys.stderr, flush=True)
    ray = scan_rates(work / "corpus", work, "ray")
    print(f"  ray: {ray}", file=sys.stderr, flush=True)
    stages = stage_rates(work / "corpus", work)
    print(f"  stages: {stages}", file=sys.stderr, flush=True)
    sqlite_commit = commit_rate(fresh_db(f"sqlite:///{work / 'commit.db'}"))
    pg_url, drop = postgres_db(args.postgres)
    try:
        pg_commit = commit_rate(fresh_db(pg_url))
        planning = planning_rates(work / "corpus", work, pg_url)
    finally:
        drop()
    print(
        f"  commit: sqlite {sqlite_commit:.0f}, postgres {pg_commit:.0f}; planning {planning}",
        file=sys.stderr,
    )
    n = local["n"]
    cores = os.cpu_count()
    rows = [
        (f"`scan --engine {name}`", f"{r['rate']:.1f} images/s",
         f"after start-up ({r['startup']:.1f} s on one file); total {r['total']:.1f} s = "
         f"{n / r['total']:.1f} images/s")
        for name, r in (("local", local), ("ray", ray))
    ]  # fmt: skip
    rows += [
        ("ray / local, after start-up", f"{ray['rate'] / local['rate']:.2f}", ""),
        ("Prepare, 1 CPU (hash, decode, item tfms)", f"{stages['prepare']:.1f} files/s", "in-process"),
        ("Screen on CPU, 1 torch thread", f"{stages['screen_1']:.1f} images/s", "batch 64, in-process"),
        (f"Screen on CPU, {cores} torch threads", f"{stages[f'screen_{cores}']:.1f} images/s", ""),
        ("driver planning, new files (walk + skip index)", f"{planning['new']:.0f} files/s",
         f"{planning['files']:,} files (hard links), PostgreSQL index"),
        ("driver planning, every file indexed (skipped)", f"{planning['indexed']:.0f} files/s", "same"),
        ("driver commit, SQLite", f"{sqlite_commit:.0f} files/s", "median of 64-file batches"),
        ("driver commit, PostgreSQL", f"{pg_commit:.0f} files/s", "same"),
    ]  # fmt: skip
    print(f"\n{n} files ({args.copies} copies of the 436 chest_xray_full originals), {cores} cores\n")
    print("| what | rate | notes |\n|---|---|---|")
    for what, rate, notes in rows:
        print(f"| {what} | {rate} | {notes} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    main()
