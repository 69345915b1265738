"""Inference throughput on real full-resolution JPEGs, in one run.

    python bench/inference.py [--model export.pkl] [--rounds 3] [--batch-size 64]

Rows:
1. the seed's way: a learner built as the seed built it (ImageBlock, Resize, resnet18),
   ``load_learner`` + ``learn.predict`` per file;
2. fastai batched: ``test_dl`` + ``get_preds`` with this project's learner;
3. ``xray-worker predict``'s path (``worker.model.predictor.Predictor``);
4. the bounds: decode-only (the pipeline's decoder and item transforms, all cores),
   model-only (ready tensors), and 1 / (1/decode + 1/model) for cores that do both.

Prints a Markdown table (median images/s over the rounds, and ratios) for BENCHMARKS.md.
Without --model, the shipped model is used if present, else a throwaway 128 px learner is
trained for one epoch (throughput does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*insecure pickle")
ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("XRAY_SCREEN_DATA", ROOT.parent / "shared" / "data"))


def small_dataset(workdir: Path) -> Path:
    src = DATA / "chest_xray_224" / "train"
    rng = random.Random(0)
    for label in ("NORMAL", "PNEUMONIA"):
        (workdir / "data" / label).mkdir(parents=True)
        for f in rng.sample(sorted((src / label).iterdir()), 40):
            shutil.copy(f, workdir / "data" / label / f.name)
    return workdir / "data"


def throwaway_model(data: Path, out: Path, size: int) -> Path:
    from training.recipe import Recipe, train

    train(data, out, Recipe(size=size, epochs=1, batch_size=16))
    return out


def seed_learner(data: Path, out: Path, size: int) -> Path:
    """The seed's recipe, as it was: fastai's ImageBlock opens every file as RGB."""
    import fastai.callback.all  # noqa: F401
    from fastai.data.all import CategoryBlock, DataBlock, RandomSplitter, parent_label
    from fastai.metrics import error_rate
    from fastai.vision.all import ImageBlock, Resize, get_image_files, vision_learner
    from torchvision.models import resnet18

    dls = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_items=get_image_files,
        get_y=parent_label,
        splitter=RandomSplitter(valid_pct=0.2, seed=42),
        item_tfms=Resize(size),
    ).dataloaders(data, bs=16, num_workers=0)
    learn = vision_learner(dls, resnet18, pretrained=False, metrics=error_rate)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1)
    learn.export(out)
    return out


def child(kind: str, model_path: Path, files: list[Path], rounds: int, batch_size: int) -> None:
    """In a fresh process (its own OpenMP settings): the worker's path, or the two bounds."""
    import json

    from worker.config import InferenceSettings  # imports worker first: as the CLI does
    from worker.model.learner import load_model
    from worker.model.predictor import Predictor
    from worker.model.stages import prepare_file

    model = load_model(model_path, trust=True)
    predictor = Predictor(model, InferenceSettings(batch_size=batch_size, device="cpu"))
    items: list = []

    def ours():
        for _ in predictor.predict(files):
            pass

    def decode_only():
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            items[:] = [item for item, _ in pool.map(partial(prepare_file, model), files)]

    def model_only():
        for i in range(0, len(items), batch_size):
            predictor.infer(items[i : i + batch_size])

    funcs = {"ours": [ours], "bounds": [decode_only, model_only]}[kind]
    print(json.dumps([[len(files) / _seconds(f) for _ in range(rounds)] for f in funcs]))


def _seconds(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def in_child(kind: str, model_path: Path, rounds: int, batch_size: int, omp: str) -> list[list[float]]:
    import json
    import subprocess

    env = {**os.environ, "OMP_WAIT_POLICY": omp}
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--model",
            str(model_path),
            "--rounds",
            str(rounds),
            "--batch-size",
            str(batch_size),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def from_rates(label: str, n: int, rates: list[float]) -> dict:
    print(f"  {label}: {', '.join(f'{r:.1f}' for r in rates)} images/s", file=sys.stderr, flush=True)
    return {"label": label, "n": n, "median": statistics.median(rates), "rates": rates}


def timed(label: str, n: int, func, rounds: int) -> dict:
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        func()
        rates.append(n / (time.perf_counter() - start))
    print(f"  {label}: {', '.join(f'{r:.1f}' for r in rates)} images/s", file=sys.stderr, flush=True)
    return {"label": label, "n": n, "median": statistics.median(rates), "rates": rates}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed-files", type=int, default=100, help="files for the slow per-file way")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--child", choices=["ours", "bounds"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        files = sorted((DATA / "chest_xray_full").rglob("*.jpeg"))
        child(args.child, args.model, files, args.rounds, args.batch_size)
        return

    import torch
    from fastai.learner import load_learner

    from worker.config import DEFAULT_MODEL
    from worker.model.learner import load_model

    files = sorted((DATA / "chest_xray_full").rglob("*.jpeg"))
    workdir = Path(tempfile.mkdtemp(prefix="xray-bench-"))
    data = small_dataset(workdir)
    model_path = args.model or (DEFAULT_MODEL if DEFAULT_MODEL.exists() else None)
    model_path = model_path or throwaway_model(data, workdir / "export.pkl", 128)
    model = load_model(model_path, trust=True)
    size = model.preprocessing.resize[0] if model.preprocessing.resize else 128
    seed_path = seed_learner(data, workdir / "seed.pkl", size)
    print(f"model {model_path}, {len(files)} files, torch threads {torch.get_num_threads()}", file=sys.stderr)

    seed = load_learner(seed_path)
    seed_files = files[: args.seed_files]

    def seed_way():
        for f in seed_files:
            with seed.no_bar():
                seed.predict(f)

    learn = load_learner(model_path)

    def fastai_batched():
        with learn.no_bar():
            learn.get_preds(dl=learn.dls.test_dl(files, bs=args.batch_size))

    [ours] = in_child("ours", model_path, args.rounds, args.batch_size, "PASSIVE")
    bounds = {
        omp: in_child("bounds", model_path, args.rounds, args.batch_size, omp)
        for omp in ("ACTIVE", "PASSIVE")
    }
    best = {
        kind: max((bounds[omp][i] for omp in bounds), key=statistics.median)
        for i, kind in enumerate(("decode", "model"))
    }
    policy = {
        kind: next(omp for omp in bounds if bounds[omp][i] is best[kind])
        for i, kind in enumerate(("decode", "model"))
    }
    results = [
        timed(
            "seed's way: seed learner, load_learner + learn.predict per file",
            len(seed_files),
            seed_way,
            args.rounds,
        ),
        timed(
            f"fastai batched: test_dl + get_preds (bs {args.batch_size})",
            len(files),
            fastai_batched,
            args.rounds,
        ),
        from_rates(f"xray-worker predict path (bs {args.batch_size})", len(files), ours),
        from_rates(
            f"bound: decode + item transforms only ({os.cpu_count()} threads, "
            f"OMP_WAIT_POLICY={policy['decode']})",
            len(files),
            best["decode"],
        ),
        from_rates(
            f"bound: model only on ready tensors (bs {args.batch_size}, OMP_WAIT_POLICY={policy['model']})",
            len(files),
            best["model"],
        ),
    ]
    decode, model_rate = results[3]["median"], results[4]["median"]
    combined = 1 / (1 / decode + 1 / model_rate)
    base = results[0]["median"]
    print(
        f"\n{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{len(files)} real JPEGs (chest_xray_full), model input `{model.preprocessing.version}`\n"
    )
    print("| path | files | median images/s | rounds | vs seed's way |")
    print("|---|---|---|---|---|")
    for r in results:
        rounds = ", ".join(f"{x:.1f}" for x in r["rates"])
        print(f"| {r['label']} | {r['n']} | {r['median']:.1f} | {rounds} | {r['median'] / base:.1f}x |")
    print(f"| combined bound 1/(1/decode + 1/model) | | {combined:.1f} | | {combined / base:.1f}x |")
    print(f"\nxray-worker predict path / combined bound: {results[2]['median'] / combined:.2f}")


if __name__ == "__main__":
    main()
