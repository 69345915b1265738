"""The training recipe: a resnet18 learner over a folder of labelled X-rays, and its fit.

From scratch by default (no network for pretrained weights here, nor on many hospital
machines): nothing is frozen, so the whole network trains from the first step, and
BatchNorm keeps learning its running statistics, so eval mode sees sane ones. The class
imbalance is countered with class weights in the loss.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fastai.callback.all  # noqa: F401  (patches fit_one_cycle, no_bar onto Learner)
import numpy as np
import torch
from fastai.callback.mixup import MixUp
from fastai.data.transforms import RandomSplitter
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
from fastai.metrics import error_rate
from fastai.vision.learner import vision_learner
from fastcore.foundation import L
from torchvision.models import resnet18

from training.data import class_root, xray_augmentations, xray_datablock
from training.split import PatientSplitter


@dataclass(frozen=True)
class Recipe:
    size: int = 128
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 42
    valid_pct: float = 0.2
    method: str = "squish"
    split: str = "patient"  # or "random" (the seed's image-level split)
    augment: bool = True
    class_weights: bool = True
    weights: Path | None = None  # a local torchvision resnet18 state dict
    augment_level: str = "mild"  # or "strong" (see training.data.xray_augmentations)
    label_smoothing: float = 0.0  # > 0: LabelSmoothingCrossEntropyFlat(eps=...), class weights kept
    mixup: float = 0.0  # > 0: fastai's MixUp callback with this Beta alpha, while fitting only

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_learner(data_dir: Path, recipe: Recipe, *, num_workers: int = 0) -> Learner:
    """DataLoaders from ``data_dir`` (plain or Kaggle layout) and a resnet18 learner."""
    seed_everything(recipe.seed)
    if recipe.split == "patient":
        splitter = PatientSplitter(recipe.valid_pct, recipe.seed)
    else:
        splitter = RandomSplitter(valid_pct=recipe.valid_pct, seed=recipe.seed)
    block = xray_datablock(
        size=recipe.size,
        method=recipe.method,
        splitter=splitter,
        aug_tfms=xray_augmentations(recipe.augment_level) if recipe.augment else (),
    )
    dls = block.dataloaders(class_root(data_dir, "train"), bs=recipe.batch_size, num_workers=num_workers)
    weight = class_weights(dls) if recipe.class_weights else None
    if recipe.label_smoothing > 0:
        loss = LabelSmoothingCrossEntropyFlat(eps=recipe.label_smoothing, weight=weight)
    else:
        loss = CrossEntropyLossFlat(weight=weight)
    return vision_learner(
        dls,
        _arch(recipe.weights),
        pretrained=recipe.weights is not None,
        n_in=1,
        loss_func=loss,
        metrics=error_rate,
    )


def class_weights(dls) -> torch.Tensor:
    """Inverse class frequency in the training split, normalised to mean 1."""
    counts = Counter(int(y) for _, y in dls.train_ds)
    freq = torch.tensor([counts.get(i, 0) for i in range(len(dls.vocab))], dtype=torch.float)
    weights = freq.sum() / (len(freq) * freq.clamp(min=1))
    return weights / weights.mean()


def _arch(weights: Path | None):
    if weights is None:
        return resnet18

    def resnet18_local(*args, **kwargs):
        model = resnet18(weights=None)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model

    return resnet18_local


def fit(learn: Learner, recipe: Recipe, *, progress: bool = True) -> None:
    """One-cycle training; with a pretrained body, one frozen epoch first (fine_tune)."""
    if progress:
        _fit(learn, recipe)
    else:
        with learn.no_bar():
            _fit(learn, recipe)


def _fit(learn: Learner, recipe: Recipe) -> None:
    # Callbacks passed to fit are removed when it ends, so MixUp is never exported.
    cbs = [MixUp(recipe.mixup)] if recipe.mixup > 0 else []
    if recipe.weights is not None:
        learn.fine_tune(recipe.epochs, recipe.lr, cbs=cbs)
    else:
        learn.fit_one_cycle(recipe.epochs, recipe.lr, cbs=cbs)


def strip_training_transforms(learn: Learner) -> None:
    """Drop this package's own training-only batch transforms (``XrayIntensity``) from ``learn``.

    They never run outside the training split, and the worker, which loads the exported
    learner, never imports ``training``: an export must not name them. Call it after
    fitting, before ``learn.export``.
    """

    def ours(tfm: Any) -> bool:
        return type(tfm).__module__.split(".")[0] == "training"

    for dl in (learn.dls.train, learn.dls.valid):
        pipeline = dl.after_batch
        pipeline.fs = pipeline.fs.filter(lambda t: not ours(t))
        for name, value in list(vars(pipeline).items()):  # Pipeline also names each transform
            if ours(value) or (isinstance(value, list | L) and any(ours(t) for t in value)):
                delattr(pipeline, name)


def train(data_dir: Path, out_path: Path, recipe: Recipe) -> Learner:
    """Build, fit quietly and export: the short path tests and benchmarks use."""
    learn = build_learner(data_dir, recipe)
    with learn.no_logging():
        fit(learn, recipe, progress=False)
    strip_training_transforms(learn)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    learn.export(out_path.resolve())
    return learn
