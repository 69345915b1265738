"""The training recipe: build a resnet18 learner over a folder of labelled X-rays and fit it.

From scratch by default (no network for pretrained weights here, nor on many hospital
machines): the whole network trains from the first step, nothing is frozen, and
BatchNorm keeps its running statistics, so eval mode sees sane statistics.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import fastai.callback.all  # noqa: F401  (patches fit_one_cycle, no_bar onto Learner)
import numpy as np
import torch
from fastai.learner import Learner
from fastai.metrics import error_rate
from fastai.vision.learner import vision_learner
from torchvision.models import resnet18

from training.data import xray_datablock


@dataclass(frozen=True)
class Recipe:
    size: int = 128
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 42
    valid_pct: float = 0.2
    method: str = "squish"
    weights: Path | None = None  # a local torchvision resnet18 state dict


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_learner(data_dir: Path, recipe: Recipe, *, splitter=None, num_workers: int = 0) -> Learner:
    seed_everything(recipe.seed)
    block = xray_datablock(
        size=recipe.size,
        method=recipe.method,
        valid_pct=recipe.valid_pct,
        seed=recipe.seed,
        splitter=splitter,
    )
    dls = block.dataloaders(data_dir, bs=recipe.batch_size, num_workers=num_workers)
    return vision_learner(
        dls, _arch(recipe.weights), pretrained=recipe.weights is not None, n_in=1, metrics=error_rate
    )


def _arch(weights: Path | None):
    if weights is None:
        return resnet18

    def resnet18_local(*args, **kwargs):
        model = resnet18(weights=None)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model

    return resnet18_local


def train(data_dir: Path, out_path: Path, recipe: Recipe) -> Learner:
    """Fit with the one-cycle policy and export the learner to ``out_path``."""
    learn = build_learner(data_dir, recipe)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(recipe.epochs, recipe.lr)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    learn.export(out_path.resolve())
    return learn
