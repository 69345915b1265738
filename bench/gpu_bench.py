"""GPU throughput: model-only at several batch sizes and precisions, and scan end to end.

    python bench/gpu_bench.py [--device cuda] [--files DIR] [--copies 10]

Model-only: ready tensors of the shipped model's input size, batch 64/256/1024, fp32 or
fp16 autocast, contiguous or channels-last; images per second (median of 5 timed runs
after 2 warm-ups, each synchronised). Scan: `xray-worker scan` on `--copies` distinct
copies of the full-resolution originals into a fresh SQLite database, with the chosen
batch size; images per second after start-up. Prints a Markdown table for BENCHMARKS.md.
Runs on the CPU too (--device cpu), which is how it is tested where no GPU is lent.
"""

from __future__ import annotations

import argparse
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
        subprocess.run([*exe, "scan", str(target), "--db", db], check=True, capture_output=True, env=env)
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
    args = parser.parse_args()
    import torch

    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    rows = model_only(args.device, [int(b) for b in args.batch_sizes.split(",")])
    n, total, startup = scan_end_to_end(args.device, args.files, args.copies, args.scan_batch_size)
    print(f"\n{name}, torch {torch.__version__}, {os.cpu_count()} CPU cores\n")
    print("| batch | precision | layout | model-only images/s |")
    print("|---|---|---|---|")
    for bs, precision, layout, rate in rows:
        print(f"| {bs} | {precision} | {layout} | {rate:.0f} |")
    rate = n / (total - startup)
    print(
        f"\n`xray-worker scan`, {n} files, batch {args.scan_batch_size}: {rate:.1f} images/s after start-up "
        f"({startup:.1f} s), {n / total:.1f} images/s in all"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
