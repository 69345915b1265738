"""The runtimes side by side, in one run: model-only and end-to-end scan, with ratios.

    python bench/runtime.py [--copies 3] [--rounds 3] [--seed-files 150]

Runtimes: torch fp32 (the learner, export.pkl), ONNX Runtime fp32 (the shipped bundle),
ONNX Runtime int8 (the shipped int8 bundle) and torch bf16 autocast (model only: it is not
offered for screening, see docs/runtime.md). Every measurement runs in its own process,
and the rounds alternate the runtimes, so that load from elsewhere on the machine falls
on all of them alike; the medians are quoted.

- seed's way: the seed's recipe, ``learn.predict`` per file (bench/throughput.py), the
  reference of the ratios;
- model only: ready inputs of the 436 chest_xray_full originals, batches of 64;
- decode only: decoding plus each model's item preprocessing (fastai's transforms for the
  learner, numpy and Pillow for a bundle), on all cores;
- scan: ``xray-worker scan`` of the corpus end to end (results and audit rows committed,
  SQLite), its rate after start-up (measured on an empty folder) and its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import throughput as tp  # noqa: E402

MODELS = ROOT / "models" / "pneumonia-resnet18"
RUNTIMES = {
    "torch fp32": MODELS / "export.pkl",
    "onnx fp32": MODELS / "onnx",
    "onnx int8": MODELS / "onnx-int8",
    "torch bf16": MODELS / "export.pkl",
}
SCANNED = ("torch fp32", "onnx fp32", "onnx int8")


def child(runtime: str, files: list[Path]) -> dict:
    """In a child process: decode-only and model-only rates of one runtime."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.app import open_model
    from worker.config import InferenceSettings, load_settings
    from worker.model.predictor import Predictor
    from worker.model.stages import prepare_file

    settings = load_settings(None, overrides={"model.path": str(RUNTIMES[runtime])})
    model = open_model(settings)
    predictor = Predictor(model, InferenceSettings(batch_size=64, device="cpu"))
    if runtime == "torch bf16":
        import torch

        predictor.engine._autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    start = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        items = [item for item, _ in pool.map(partial(prepare_file, model), files)]
    decode = len(files) / (time.perf_counter() - start)
    predictor.infer(items[:64])  # warm
    start = time.perf_counter()
    for i in range(0, len(items), 64):
        predictor.infer(items[i : i + 64])
    return {"decode": decode, "model": len(items) / (time.perf_counter() - start)}


def run_child(runtime: str, files_dir: Path) -> dict:
    args = [sys.executable, __file__, "--child", runtime, "--files-dir", str(files_dir)]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def scan(runtime: str, corpus: Path, work: Path, n: int, round_: int) -> dict:
    name = runtime.replace(" ", "-")
    db = f"sqlite:///{work / f'scan-{name}-{round_}.db'}"
    model = ["--model", str(RUNTIMES[runtime])]
    subprocess.run([tp.EXE, "db", "upgrade", "--db", db], check=True, capture_output=True)
    empty = work / "empty"
    empty.mkdir(exist_ok=True)
    startup, _ = tp.timed_command([tp.EXE, "scan", empty, "--db", db, *model])
    total, rss = tp.timed_command([tp.EXE, "scan", corpus, "--db", db, *model])
    return {"rate": n / (total - startup), "startup": startup, "total": total, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed-files", type=int, default=150)
    parser.add_argument("--child")
    parser.add_argument("--files-dir", type=Path)
    args = parser.parse_args()
    if args.child:
        import warnings

        warnings.filterwarnings("ignore")
        print(json.dumps(child(args.child, sorted(args.files_dir.iterdir()))))
        return

    work = Path(tempfile.mkdtemp(prefix="xray-runtime-"))
    corpus = work / "corpus"
    files = tp.make_corpus(corpus, args.copies)
    originals = work / "originals"
    originals.mkdir()
    for f in files[: len(files) // args.copies]:
        (originals / f.name).symlink_to(f)
    from bench.inference import seed_learner, small_dataset

    seed_learner(small_dataset(work), work / "seed.pkl", 128)
    seed, _ = tp.run_child("seed", corpus, work, args.seed_files)
    base = seed["n"] / seed["seconds"]
    print(f"seed's way: {base:.1f} images/s", file=sys.stderr, flush=True)

    bounds: dict[str, list[dict]] = {r: [] for r in RUNTIMES}
    scans: dict[str, list[dict]] = {r: [] for r in SCANNED}
    for round_ in range(args.rounds):
        for runtime in RUNTIMES:
            bounds[runtime].append(run_child(runtime, originals))
            print(f"  round {round_ + 1} {runtime}: {bounds[runtime][-1]}", file=sys.stderr, flush=True)
        for runtime in SCANNED:
            scans[runtime].append(scan(runtime, corpus, work, len(files), round_))
            print(f"  round {round_ + 1} scan {runtime}: {scans[runtime][-1]}", file=sys.stderr, flush=True)

    def median(rows: list[dict], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    print(
        f"\n{len(files)} files ({args.copies} copies of the 436 chest_xray_full originals), "
        f"{os.cpu_count()} cores, "
        f"shipped model (128 px), SQLite; medians of {args.rounds} alternating rounds; "
        f"seed's way {base:.1f} images/s ({seed['n']} files)\n"
    )
    fp32 = median(bounds["torch fp32"], "model")
    print(
        "| runtime | model only images/s | vs torch fp32 | decode only images/s | scan images/s "
        "| scan vs seed's way | scan start-up s | scan peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for runtime in RUNTIMES:
        model, decode = median(bounds[runtime], "model"), median(bounds[runtime], "decode")
        row = f"| {runtime} | {model:.1f} | {model / fp32:.2f}x | {decode:.1f} |"
        if runtime in scans:
            s = scans[runtime]
            rate = median(s, "rate")
            row += f" {rate:.1f} | {rate / base:.1f}x | {median(s, 'startup'):.1f} | {median(s, 'rss'):.0f} |"
        else:
            row += " not offered | | | |"
        print(row)


if __name__ == "__main__":
    main()
