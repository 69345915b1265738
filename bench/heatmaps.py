"""What a heatmap costs on the CPU, against the forward pass screening runs anyway.

    python bench/heatmaps.py [--films 32] [--batch-size 16] [--rounds 5] [--threads 2]
    python bench/heatmaps.py --sanity        # also the localisation check per method and layer

Rows, per image, median over ``--rounds`` batches of real site_sample films (decoded once,
outside the timings):
1. the forward pass: ``Predictor.infer`` (BatchNorm folded, channels_last, inference_mode);
2. the map alone: ``GradCam`` (worker/explain/gradcam.py), its own forward pass and a
   backward pass through the head;
3. pytorch-grad-cam's ``GradCAM`` on the learner's network, when the package is importable
   (it is not a dependency: ``PYTHONPATH=DIR`` with it installed there);
4. the overlay, in its three steps: the film decoded again up to 1024 px (the screening
   decoded JPEGs at reduced size), ``render``, and ``write_png``.

``--sanity`` prints, for Grad-CAM and HiResCAM at layer4 (``0.7``) and layer3 (``0.6``), how
often the map's peak falls in the half of the image where a synthetic opacity was pasted
(tests/integration/test_heatmaps.py's blob, 30 NORMAL films, each side), and how often the
map is empty. Prints Markdown for BENCHMARKS.md and docs/heatmaps.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*insecure pickle")
ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("XRAY_SCREEN_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))


def per_image(rounds: int, batch: int, step: Callable[[], object]) -> float:
    """Median milliseconds per image of ``step`` (one batch), after one warm-up call."""
    step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000 / batch)
    return statistics.median(times)


def cost(args: argparse.Namespace) -> None:
    import torch

    from worker.config import DEFAULT_LEARNER, InferenceSettings
    from worker.decode import decode_file
    from worker.explain.gradcam import GradCam
    from worker.explain.overlay import render, write_png
    from worker.model.learner import load_model
    from worker.model.predictor import Predictor
    from worker.model.stages import prepare_file

    torch.set_num_threads(args.threads)
    model = load_model(DEFAULT_LEARNER, trust=True)
    paths = sorted((DATA / "site_sample" / "PNEUMONIA").glob("*.jpeg"))[: args.films]
    prepared = [prepare_file(model, p) for p in paths]
    items = [item for item, _ in prepared]
    b = args.batch_size
    batches = [items[i : i + b] for i in range(0, len(items) - b + 1, b)] or [items]
    cycle = iter(range(1 << 30))

    def next_batch() -> list:
        return batches[next(cycle) % len(batches)]

    predictor = Predictor(model, InferenceSettings(device="cpu", batch_size=b, threads=args.threads))
    gradcam = GradCam.of(model)
    rows = [
        (
            "forward pass (`Predictor.infer`)",
            per_image(args.rounds, b, lambda: predictor.infer(next_batch())),
        ),
        ("map alone (`GradCam`)", per_image(args.rounds, b, lambda: gradcam(next_batch()))),
    ]
    try:
        from pytorch_grad_cam import GradCAM  # type: ignore[import-not-found]
    except ImportError:
        GradCAM = None
    if GradCAM is not None:
        net = model.learner.model.eval()
        package = GradCAM(model=net, target_layers=[net.get_submodule("0.7")])

        def theirs() -> object:
            batch = next_batch()
            x = model.batch_pipeline(batch[0].__class__(torch.stack(batch))).as_subclass(torch.Tensor).float()
            return package(input_tensor=x, targets=[lambda o: o[1] - o[0]] * len(batch))

        rows.append(("map alone (pytorch-grad-cam 1.5.7, unfolded net)", per_image(args.rounds, b, theirs)))

    maps = gradcam(items[:b]).maps
    films = [
        (path, decoded.pixels if max(decoded.pixels.shape) >= 1024 else None)
        for path, (_, decoded) in zip(paths[:b], prepared[:b], strict=True)
    ]

    def redecode() -> list:
        return [
            pixels if pixels is not None else decode_file(path, min_side=1024).pixels
            for path, pixels in films
        ]

    full = redecode()
    rendered = [render(film, heat, max_side=1024) for film, heat in zip(full, maps, strict=True)]
    with tempfile.TemporaryDirectory() as tmp:
        n = iter(range(1 << 30))

        def write() -> None:
            for image in rendered:
                write_png(image, Path(tmp) / f"{next(n)}.png")

        rows += [
            ("overlay: decode again up to 1024 px", per_image(args.rounds, b, redecode)),
            (
                "overlay: render (fit, colour, caption)",
                per_image(
                    args.rounds,
                    b,
                    lambda: [render(f, h, max_side=1024) for f, h in zip(full, maps, strict=True)],
                ),
            ),
            ("overlay: PNG write", per_image(args.rounds, b, write)),
        ]
        sizes = [p.stat().st_size for p in Path(tmp).iterdir()]

    forward = rows[0][1]
    print(
        f"\n{len(paths)} site_sample films, batches of {b}, {args.threads} torch threads, CPU, "
        f"median of {args.rounds}\n"
    )
    print("| step | ms per image | x forward pass |")
    print("|---|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} | {ms / forward:.1f} |")
    print(f"\nPNG size: median {statistics.median(sizes) / 1024:.0f} KiB")


def sanity(films: int) -> None:
    from test_heatmaps import BLOB_LEVELS, BLOB_SIGMA, LUNGS, peak_side, with_blob  # tests/integration

    from worker.config import DEFAULT_LEARNER
    from worker.explain.gradcam import GradCam
    from worker.model.learner import load_model
    from worker.model.stages import prepare_file

    model = load_model(DEFAULT_LEARNER, trust=True)
    decoded = [
        prepare_file(model, p)[1] for p in sorted((DATA / "site_sample" / "NORMAL").glob("*.jpeg"))[:films]
    ]
    blobs = {side: [model.to_item(with_blob(d, side)) for d in decoded] for side in LUNGS}
    print(
        f"\nsynthetic opacity ({BLOB_LEVELS:.0f} grey levels, sigma {BLOB_SIGMA:.0%} of the width), "
        f"{films} NORMAL films\n"
    )
    print("| method | layer | peak in the blob's half: left | right | empty maps |")
    print("|---|---|---|---|---|")
    for weighting in ("gradcam", "hirescam"):
        for layer in ("0.7", "0.6"):
            gradcam = GradCam.of(model, layer=layer, weighting=weighting)
            hits, empty = {}, 0
            for side, items in blobs.items():
                maps = gradcam(items).maps
                sides = [peak_side(m) for m in maps]
                hits[side] = sum(s == side for s in sides) / len(sides)
                empty += sum(s is None for s in sides)
            print(
                f"| {weighting} | {layer} | {hits['left']:.0%} | {hits['right']:.0%} | "
                f"{empty / (2 * films):.0%} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--films", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sanity", action="store_true", help="also the synthetic-opacity check per method")
    args = parser.parse_args()
    cost(args)
    if args.sanity:
        sanity(30)


if __name__ == "__main__":
    main()
