#!/usr/bin/env bash
# GPU benchmark, prepared for the device tool's GPU machine (PyTorch there, no network).
#
# Here, once: fetch the Python 3.12 wheels the project needs beyond that machine's image
#   bash bench/gpu.sh fetch
# (also copies 120 real JPEGs into .gpu-data: the tree that travels is limited to 64 MiB,
# and the shipped model alone is 47 MB). Then, through the device tool:
#   run(command="bash bench/gpu.sh run", carry=[".whl", ".gpu-data"], timeout_s=540)
# It prints the Markdown table for BENCHMARKS.md (with the card's name).
# ONNX Runtime on the GPU (issue 16): onnxruntime-gpu's wheel is about 250 MB, more than the
# 64 MiB the device tool carries, so its rows appear only where that machine has it installed
# (gpu_bench.py says which providers it found). JPEG decoding on the GPU needs only torchvision.
# For the fp16 bundle's row: xray-train export models/pneumonia-resnet18/export.pkl --out .gpu-data/fp16
#   --variant fp16 --validate ../shared/data/site_sample, then `run --fp16-bundle .gpu-data/fp16`.
set -euo pipefail
cd "$(dirname "$0")/.."
WANT="fastai==2.8.* fastcore fasttransform plum-dispatch beartype fastprogress fastdownload
      pydicom pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle sqlalchemy alembic mako
      watchdog psycopg psycopg-binary typing-extensions"

case "${1:-run}" in
fetch)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    for pkg in $WANT; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "$pkg"
    done
    grep -qx '/.gpu-data/' .git/info/exclude || echo '/.gpu-data/' >> .git/info/exclude
    mkdir -p .gpu-data/chest_xray_full
    find ../shared/data/chest_xray_full -name '*.jpeg' | sort | head -120 | xargs -I{} cp {} .gpu-data/chest_xray_full/
    du -sh .whl .gpu-data
    ;;
run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD XRAY_SCREEN_DATA="${XRAY_SCREEN_DATA:-$PWD/.gpu-data}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 bench/gpu_bench.py --device cuda --copies 30 "${@:2}"
    ;;
*)
    echo "usage: bash bench/gpu.sh fetch|run" >&2; exit 2
    ;;
esac
