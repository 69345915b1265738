"""GPU throughput: model-only at several batch sizes and precisions, and scan end to end.

    python bench/gpu_bench.py [--device cuda] [--files DIR] [--copies 10]

Model-only: ready tensors of the shipped model's input size, batch 64/256/1024, fp32 or
fp16 autocast, contiguous or channels-last; images per second (median of 5 timed runs
after 2 warm-ups, each synchronised). Scan: `xray-worker scan` on `--copies` distinct
copies of the full-resolution originals into a fresh SQLite database, with the chosen
batch size; images per second after start-up. Prints a Markdown table for BENCHMARKS.md.
Runs on the CPU too (--device cpu), which is how it is tested where no GPU is lent.

Also, where they are installed (issue 16): the shipped ONNX bundle on ONNX Runtime's CUDA
execution provider (and TensorRT's, if the wheel has it), fp32 and an fp16 bundle
(``--fp16-bundle DIR``, from ``xray-train export --variant fp16``); and JPEG decoding on the
GPU (``torchvision.io.decode_jpeg`` on the device, then a resize to the model's input and the
model): what full-resolution JPEGs could reach end to end with the decoder moved off the CPU.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("XRAY_SCREEN_DATA", ROOT.parent / "shared" / "data"))
MODEL = ROOT / "models" / "pneumonia-resnet18" / "export.pkl"
BUNDLE = ROOT / "models" / "pneumonia-resnet18" / "onnx"


def median_rate(run, n: int, device: str, rounds: int = 5) -> float:
    """Images per second of ``run()`` on ``n`` images: median of ``rounds`` after 2 warm-ups."""
    import torch

    times = []
    for i in range(rounds + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def onnx_model_only(bundles: dict[str, Path], batch_sizes: list[int]) -> list[tuple[int, str, str, float]]:
    """The bundles on each GPU execution provider ONNX Runtime has here (none: no rows)."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        print("  onnxruntime is not installed: no ONNX rows", file=sys.stderr)
        return []
    rows = []
    available = ort.get_available_providers()
    for provider in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
        if provider not in available:
            print(f"  {provider}: not in this onnxruntime ({available})", file=sys.stderr)
            continue
        for name, folder in bundles.items():
            session = ort.InferenceSession(
                str(folder / "model.onnx"), providers=[provider, "CPUExecutionProvider"]
            )
            for bs in batch_sizes:
                x = np.random.default_rng(0).standard_normal((bs, 1, 128, 128)).astype(np.float32)
                run = functools.partial(session.run, None, {"image": x})
                rate = median_rate(run, bs, "cpu")  # session.run is synchronous
                rows.append((bs, name, provider.removesuffix("ExecutionProvider"), rate))
                print(f"  onnx {name} {provider} bs {bs}: {rate:.0f} images/s", file=sys.stderr, flush=True)
    return rows


def gpu_decode(device: str, files: list[Path], batch: int) -> dict[str, float]:
    """Full-resolution JPEGs decoded on the GPU (nvJPEG through torchvision), alone and with a
    resize to 128 px and the model: images per second."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    from worker.model.learner import load_model

    data = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files[:batch]]
    net = load_model(MODEL, trust=True).learner.model.eval().to(device).to(memory_format=torch.channels_last)

    def decode() -> list:
        return decode_jpeg(data, mode=ImageReadMode.GRAY, device=device)

    def pipeline() -> None:
        images = decode()
        x = torch.cat([F.interpolate(i[None].float(), size=(128, 128), mode="bilinear") for i in images])
        with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
            net(((x / 255 - 0.5046) / 0.2384).contiguous(memory_format=torch.channels_last))

    return {
        "decode": median_rate(decode, len(data), device),
        "pipeline": median_rate(pipeline, len(data), device),
    }


def model_only(device: str, batch_sizes: list[int]) -> list[tuple[int, str, str, float]]:
    import torch

    from worker.model.learner import load_model

    model = load_model(MODEL, trust=True)
    net = model.learner.model.eval().to(device)
    h, w = model.preprocessing.resize or (224, 224)
    rows = []
    for bs in batch_sizes:
        x = torch.rand(bs, 1, h, w, device=device)
        for precision in ("fp32", "fp16"):
            for layout in ("contiguous", "channels_last"):
                if precision == "fp16" and device == "cpu":
                    continue
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                net = net.to(memory_format=fmt)
                xx = x.contiguous(memory_format=fmt)
                autocast = torch.autocast(device, dtype=torch.float16, enabled=precision == "fp16")
                times = []
                with torch.inference_mode(), autocast:
                    for i in range(7):
                        if device == "cuda":
                            torch.cuda.synchronize()
                        start = time.perf_counter()
                        net(xx)
                        if device == "cuda":
                            torch.cuda.synchronize()
                        if i >= 2:
                            times.append(time.perf_counter() - start)
                rows.append((bs, precision, layout, bs / statistics.median(times)))
                print(
                    f"  bs {bs} {precision} {layout}: {rows[-1][3]:.0f} images/s", file=sys.stderr, flush=True
                )
    return rows


def scan_end_to_end(
    device: str, files_dir: Path | None, copies: int, batch_size: int
) -> tuple[int, float, float]:
    work = Path(tempfile.mkdtemp(prefix="xray-gpu-"))
    corpus = work / "corpus"
    corpus.mkdir()
    sources = sorted((files_dir or DATA / "chest_xray_full").rglob("*.jpeg"))
    n = 0
    for i in range(copies):
        for src in sources:
            (corpus / f"c{i}-{src.name}").write_bytes(src.read_bytes() + b"\0copy" + i.to_bytes(4, "big"))
            n += 1
    exe = (
        [sys.executable, "-m", "worker.cli"]
        if not Path(sys.executable).with_name("xray-worker").exists()
        else [str(Path(sys.executable).with_name("xray-worker"))]
    )
    db = f"sqlite:///{work / 'scan.db'}"
    env = {
        **os.environ,
        "XRAY_SCREEN_INFERENCE_DEVICE": device,
        "XRAY_SCREEN_INFERENCE_BATCH_SIZE": str(batch_size),
    }
    subprocess.run([*exe, "db", "upgrade", "--db", db], check=True, capture_output=True, env=env)
    (work / "empty").mkdir()
    timings = []
    for target in (work / "empty", corpus):
        start = time.perf_counter()
        # The learner on torch: a GPU machine may have no onnxruntime-gpu (the bundle's rows above).
        scan = [*exe, "scan", str(target), "--db", db, "--model", str(MODEL)]
        subprocess.run(scan, check=True, capture_output=True, env=env)
        timings.append(time.perf_counter() - start)
    startup, total = timings
    return n, total, startup


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--files", type=Path)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--batch-sizes", default="64,256,1024")
    parser.add_argument("--scan-batch-size", type=int, default=256)
    parser.add_argument("--fp16-bundle", type=Path, help="An fp16 bundle (xray-train export --variant fp16).")
    args = parser.parse_args()
    import torch

    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = model_only(args.device, batch_sizes)
    bundles = {"fp32": BUNDLE, **({"fp16": args.fp16_bundle} if args.fp16_bundle else {})}
    onnx_rows = onnx_model_only(bundles, batch_sizes)
    jpegs = sorted((args.files or DATA / "chest_xray_full").rglob("*.jpeg"))
    decoded = gpu_decode(args.device, jpegs, 256) if args.device == "cuda" else None
    n, total, startup = scan_end_to_end(args.device, args.files, args.copies, args.scan_batch_size)
    print(f"\n{name}, torch {torch.__version__}, {os.cpu_count()} CPU cores\n")
    print("| batch | precision | layout | model-only images/s |")
    print("|---|---|---|---|")
    for bs, precision, layout, rate in rows:
        print(f"| {bs} | {precision} | {layout} | {rate:.0f} |")
    for bs, name, provider, rate in onnx_rows:
        print(f"| {bs} | ONNX {name} | {provider} | {rate:.0f} |")
    if decoded:
        print(
            f"\nJPEG on the GPU (torchvision decode_jpeg, batch of 256 full-resolution files): decode "
            f"{decoded['decode']:.0f} images/s; decode + resize + model (fp16) "
            f"{decoded['pipeline']:.0f} images/s"
        )
    rate = n / (total - startup)
    print(
        f"\n`xray-worker scan`, {n} files, batch {args.scan_batch_size}: {rate:.1f} images/s after start-up "
        f"({startup:.1f} s), {n / total:.1f} images/s in all"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
