"""xray-screen worker: decode chest X-rays, screen them with an exported fastai learner."""

import os

__version__ = "0.1.0"

# OpenMP threads that spin while waiting steal the cores the decode threads need: with the
# model and decoding sharing a CPU, passive waiting is ~10-15% faster end to end (see
# BENCHMARKS.md). Takes effect only if set before torch is first imported; an operator's
# own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
