"""Fitting the image gate of a model on its training films (``xray-train gate``).

The gate (``worker/model/gate.py``) needs two things that only training data gives: the
class means and covariance of the model's features on the films it was trained on, and a
limit set on films of the same population it did not train on. Both come from the training
folder, split as ``fit`` splits it (patient-aware, the same share and seed). The features
are computed by the worker's own predictor, so the gate sees exactly what screening sees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import class_root, get_xray_files
from training.split import PatientSplitter
from worker.config import InferenceSettings
from worker.errors import XrayScreenError
from worker.model.gate import ImageGate, fit_gate
from worker.model.predictor import Predictor
from worker.model.stages import prepare_file

# Where the gate looks by default: resnet's layer1 (the fastai model's body is child 0; its
# children 4-7 are layer1-4), each channel's mean on a 3 x 3 grid: where things are on the film.
# docs/gate.md has the measurements.
DEFAULT_LAYERS = ("0.4:grid3",)


@dataclass(frozen=True)
class GateFit:
    gate: ImageGate
    train_files: int
    valid_files: int
    valid_refused: float  # share of the validation films above the limit
    seconds: float


def layer_features(
    model: Any, files: list[Path], layers: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Features by layer of the files the decoder takes, and their indexes in ``files``."""
    predictor = Predictor(model, InferenceSettings(batch_size=64, device="cpu"), feature_layers=layers)
    items, kept = [], []
    for i, path in enumerate(files):
        try:
            items.append(prepare_file(model, path)[0])
            kept.append(i)
        except XrayScreenError:
            continue
    parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    logits = []
    for start in range(0, len(items), 64):
        _, features, batch_logits = predictor.infer_features(items[start : start + 64])
        if features is None:
            raise ValueError("this model's structure has no penultimate layer to fit a gate on")
        logits.append(batch_logits)
        for name in layers:
            parts[name].append(features[name])
    if not items:
        return {name: np.empty((0, 0)) for name in layers}, kept, np.empty((0, len(model.vocab)))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}, kept, np.concatenate(logits)


def fit_model_gate(
    model: Any,
    data_dir: Path,
    *,
    layers: tuple[str, ...] = DEFAULT_LAYERS,
    valid_pct: float = 0.2,
    seed: int = 42,
    refuse_share: float = 0.01,
) -> GateFit:
    """The image gate of ``model`` from the labelled films in ``data_dir`` (class folders)."""
    start = time.perf_counter()
    files = get_xray_files(class_root(data_dir, "train"))
    if not files:
        raise FileNotFoundError(f"no X-rays under {data_dir}")
    labels = np.array([model.vocab.index(f.parent.name) for f in files])
    train_idx, valid_idx = PatientSplitter(valid_pct, seed)(files)
    train, kept_train, _ = layer_features(model, [files[i] for i in train_idx], layers)
    valid, _, _ = layer_features(model, [files[i] for i in valid_idx], layers)
    train_labels = labels[[train_idx[i] for i in kept_train]]
    fitted_on = f"{data_dir} ({len(train_idx)} training films; limit on {len(valid_idx)} validation films)"
    gate = fit_gate(train, train_labels, valid, refuse_share=refuse_share, fitted_on=fitted_on)
    refused = float(np.mean(gate.scores(valid) > gate.limit))
    return GateFit(gate, len(train_idx), len(valid_idx), refused, time.perf_counter() - start)
