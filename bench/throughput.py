"""Whole-pipeline throughput on >= 1,000 real full-resolution X-rays, in one run.

    python bench/throughput.py [--copies 3] [--seed-files 150]

Every row runs in its own process, so each has its own peak memory (ru_maxrss):

1. the seed's way: the seed's learner (ImageBlock), `load_learner` + `learn.predict` per
   file + one INSERT (and commit) per file into SQLite;
2. fastai batched: `test_dl` + `get_preds` with the shipped learner, then one bulk INSERT;
3. `xray-worker scan` end to end (results, audit and index rows committed);
4. `xray-worker watch` end to end: files renamed into the inbox at once, until every
   audit row is committed;
5. the bounds: decode-only (decoder + item transforms on all cores), model-only (ready
   tensors), and 1 / (1/decode + 1/model).

The corpus: the 436 originals of chest_xray_full, `--copies` times, each copy with a few
bytes after the JPEG end marker so its SHA-256 differs (so no copy is a duplicate) while
its pixels do not. Rows 3 and 4 report their rate after start-up (model load, warm-up),
which is measured on its own and shown; the total time is shown too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("XRAY_SCREEN_DATA", ROOT.parent / "shared" / "data"))
EXE = Path(sys.executable).with_name("xray-worker")
MODEL = ROOT / "models" / "pneumonia-resnet18" / "export.pkl"
STABILITY = 2.0  # the daemon's default stability window, seconds


def make_corpus(dst: Path, copies: int) -> list[Path]:
    dst.mkdir(parents=True)
    files = []
    for i in range(copies):
        for src in sorted((DATA / "chest_xray_full").rglob("*.jpeg")):
            out = dst / f"c{i}-{src.name}"
            out.write_bytes(src.read_bytes() + b"\0copy" + i.to_bytes(4, "big"))
            files.append(out)
    return files


# -- rows, each run in a child process ------------------------------------------------


def row_seed(files: list[Path], work: Path) -> dict:
    from fastai.learner import load_learner

    learn = load_learner(work / "seed.pkl")
    db = sqlite3.connect(work / "seed.db")
    db.execute("create table results (path text, label text, probability real)")
    start = time.perf_counter()
    for f in files:
        with learn.no_bar():
            label, _, probs = learn.predict(f)
        db.execute("insert into results values (?, ?, ?)", (str(f), str(label), float(probs.max())))
        db.commit()
    return {"n": len(files), "seconds": time.perf_counter() - start}


def row_fastai(files: list[Path], work: Path) -> dict:
    from fastai.learner import load_learner

    from worker.model.learner import MovedModules  # the learner's classes moved since its export

    learn = load_learner(MODEL, pickle_module=MovedModules)
    db = sqlite3.connect(work / "fastai.db")
    db.execute("create table results (path text, label integer, probability real)")
    start = time.perf_counter()
    with learn.no_bar():
        probs, _ = learn.get_preds(dl=learn.dls.test_dl(files, bs=64))
    rows = [(str(f), int(p.argmax()), float(p.max())) for f, p in zip(files, probs, strict=True)]
    db.executemany("insert into results values (?, ?, ?)", rows)
    db.commit()
    return {"n": len(files), "seconds": time.perf_counter() - start}


def row_bounds(files: list[Path], work: Path) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from worker.config import InferenceSettings
    from worker.model.learner import load_model
    from worker.model.predictor import Predictor
    from worker.model.stages import prepare_file

    model = load_model(MODEL, trust=True)
    predictor = Predictor(model, InferenceSettings(batch_size=64, device="cpu"))
    start = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        items = [item for item, _ in pool.map(partial(prepare_file, model), files)]
    decode = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(0, len(items), 64):
        predictor.infer(items[i : i + 64])
    return {"n": len(files), "decode_seconds": decode, "model_seconds": time.perf_counter() - start}


ROWS = {"seed": row_seed, "fastai": row_fastai, "bounds": row_bounds}


def peak_rss_mib(proc: subprocess.Popen) -> float:
    """Wait for ``proc``, sampling its own peak resident memory (VmHWM) until it exits.

    (ru_maxrss is no good here: a child inherits its parent's high-water mark at fork.)
    """
    peak = 0.0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        time.sleep(0.05)
    return peak


def run_child(row: str, files_dir: Path, work: Path, limit: int | None, omp: str = "") -> tuple[dict, float]:
    args = [sys.executable, __file__, "--row", row, "--files-dir", str(files_dir), "--work", str(work)]
    if limit:
        args += ["--limit", str(limit)]
    out = work / f"{row}.json"
    env = {**os.environ, **({"OMP_WAIT_POLICY": omp} if omp else {})}
    with out.open("wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.DEVNULL, env=env)
    rss = peak_rss_mib(proc)
    if proc.returncode != 0:
        raise SystemExit(f"row {row} failed")
    return json.loads(out.read_text().strip().splitlines()[-1]), rss


def timed_command(args: list) -> tuple[float, float]:
    """Run a command to completion; (seconds, peak RSS MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rss = peak_rss_mib(proc)
    if proc.returncode != 0:
        raise SystemExit(f"{args[1]} failed: {proc.returncode}")
    return time.perf_counter() - start, rss


def scan_row(files_dir: Path, work: Path) -> dict:
    db = f"sqlite:///{work / 'scan.db'}"
    subprocess.run([EXE, "db", "upgrade", "--db", db], check=True, capture_output=True)
    empty = work / "empty"
    empty.mkdir()
    startup, _ = timed_command([EXE, "scan", empty, "--db", db])
    total, rss = timed_command([EXE, "scan", files_dir, "--db", db])
    return {"startup": startup, "total": total, "rss": rss}


def watch_row(files: list[Path], work: Path) -> dict:
    db = f"sqlite:///{work / 'watch.db'}"
    subprocess.run([EXE, "db", "upgrade", "--db", db], check=True, capture_output=True)
    inbox, log = work / "inbox", work / "watch.log"
    inbox.mkdir()
    start = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                EXE,
                "watch",
                "--inbox",
                inbox,
                "--processed",
                work / "processed",
                "--failed",
                work / "failed",
                "--db",
                db,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    while "ready: screening" not in log.read_text(errors="replace"):
        time.sleep(0.05)
    startup = time.perf_counter() - start
    t0 = time.perf_counter()
    for f in files:
        f.rename(inbox / f.name)
    first = last = None
    with sqlite3.connect(work / "watch.db") as conn:
        while True:
            n = conn.execute("select count(*) from audit_events").fetchone()[0]
            if n and first is None:
                first = time.perf_counter()
            if n >= len(files):
                last = time.perf_counter()
                break
            time.sleep(0.02)
    status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
    hwm = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    # The throughput clock starts once the files have sat out the stability window (a fixed
    # wait: latency, not work) and stops at the last commit.
    return {
        "startup": startup,
        "first_after": first - t0,
        "busy": last - t0 - STABILITY,
        "total": last - t0,
        "rss": hwm,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--seed-files", type=int, default=150)
    parser.add_argument("--row", choices=sorted(ROWS))
    parser.add_argument("--files-dir", type=Path)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    if args.row:  # a child
        import warnings

        warnings.filterwarnings("ignore")
        files = sorted(args.files_dir.iterdir())[: args.limit]
        print(json.dumps(ROWS[args.row](files, args.work)))
        return

    work = Path(tempfile.mkdtemp(prefix="xray-throughput-"))
    files = make_corpus(work / "corpus", args.copies)
    n = len(files)
    print(f"corpus: {n} files in {work / 'corpus'}", file=sys.stderr, flush=True)
    from bench.inference import seed_learner, small_dataset

    seed_learner(small_dataset(work), work / "seed.pkl", 128)

    results = {}
    seed, seed_rss = run_child("seed", work / "corpus", work, args.seed_files)
    results["seed"] = (seed["n"] / seed["seconds"], seed_rss)
    print(f"  seed: {results['seed'][0]:.1f} images/s", file=sys.stderr, flush=True)
    fast, fast_rss = run_child("fastai", work / "corpus", work, None)
    results["fastai"] = (fast["n"] / fast["seconds"], fast_rss)
    print(f"  fastai: {results['fastai'][0]:.1f} images/s", file=sys.stderr, flush=True)
    scan = scan_row(work / "corpus", work)
    results["scan"] = (n / (scan["total"] - scan["startup"]), scan["rss"])
    print(f"  scan: {results['scan'][0]:.1f} images/s ({scan})", file=sys.stderr, flush=True)
    # Each bound at its best: OpenMP's spinning threads help the model alone, hurt decoding.
    runs = [run_child("bounds", work / "corpus", work, None, omp) for omp in ("ACTIVE", "PASSIVE")]
    bounds_rss = max(rss for _, rss in runs)
    decode = max(n / b["decode_seconds"] for b, _ in runs)
    model = max(n / b["model_seconds"] for b, _ in runs)
    print(f"  bounds: decode {decode:.1f}, model {model:.1f}", file=sys.stderr, flush=True)
    watch = watch_row(files, work)
    results["watch"] = (n / watch["busy"], watch["rss"])
    print(f"  watch: {results['watch'][0]:.1f} images/s ({watch})", file=sys.stderr, flush=True)
    combined = 1 / (1 / decode + 1 / model)
    base = results["seed"][0]
    print(
        f"\n{n} files ({args.copies} copies of the 436 chest_xray_full originals), {os.cpu_count()} cores, "
        f"shipped model (128 px), SQLite\n"
    )
    print("| path | images/s | vs seed's way | vs combined bound | peak RSS MiB | notes |")
    print("|---|---|---|---|---|---|")
    notes = {
        "seed": f"{seed['n']} files, one INSERT + commit each",
        "fastai": "one bulk INSERT",
        "scan": f"after start-up ({scan['startup']:.1f} s, measured on an empty folder); "
        f"total {scan['total']:.1f} s = {n / scan['total']:.1f} images/s",
        "watch": f"all {n} committed {watch['total']:.1f} s after the drop, minus the 2 s stability window; "
        f"first commit after {watch['first_after']:.1f} s; start-up {watch['startup']:.1f} s",
    }
    names = {
        "seed": "seed's way: learn.predict per file",
        "fastai": "fastai batched: test_dl + get_preds",
        "scan": "`xray-worker scan` end to end",
        "watch": "`xray-worker watch` end to end",
    }
    for key in ("seed", "fastai", "scan", "watch"):
        rate, rss = results[key]
        ratios = f"{rate / base:.1f}x | {rate / combined:.2f}"
        print(f"| {names[key]} | {rate:.1f} | {ratios} | {rss:.0f} | {notes[key]} |")
    print(f"| bound: decode only (all cores) | {decode:.1f} | {decode / base:.1f}x | | {bounds_rss:.0f} | |")
    print(f"| bound: model only (bs 64) | {model:.1f} | {model / base:.1f}x | | | |")
    print(f"| combined bound 1/(1/decode + 1/model) | {combined:.1f} | {combined / base:.1f}x | 1.00 | | |")
    print(f"\nwatch / scan: {results['watch'][0] / results['scan'][0]:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
