"""The image half of the gate: is this film like the films the model was trained on?

A PNG carries no tags, so whether an image is a chest film the model can judge must come
from the image itself. The model's own features answer it. Films like the training films
cluster around their class means in each layer's features, and an MR slice, a photo or an
adult film sits far from them.

- **The score**: at each chosen layer, the Mahalanobis distance to the nearest class mean
  under the training films' shared covariance (Lee et al., NeurIPS 2018). It is squared and
  divided by the number of features, so 1.0 is a typical training film. It is fitted on the
  training films and stored with the model (its metadata's ``gate``).
- **The layers**: ``penultimate`` is the 512 values the final linear layer turns into class
  scores. A convolutional layer such as ``0.6`` (resnet's layer3) is summarised by the mean
  and standard deviation of each channel.
- **The limit**: several layers are combined by the largest of their scores, each divided by
  its own 99th percentile on held-out films. The combined ``limit`` is set so that a chosen
  share (1%) of in-distribution validation films scores above it.

docs/gate.md says why this score, and which layers, with the measurements
(``bench/gate_study.py``). The cost is pure numpy on features of the forward pass that
screening runs anyway: one small product per layer and image. Pure numpy: the features
are caught by ``worker/model/taps.py`` on torch, or are outputs of a bundle's ONNX graph.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

SHRINKAGE = 0.01  # ridge on the covariance: a few thousand films for hundreds of features
PENULTIMATE = "penultimate"


@dataclass(frozen=True)
class LayerStats:
    """One layer's class means, the inverse of its shared covariance, and its scale."""

    layer: str
    means: np.ndarray  # classes x features
    precision: np.ndarray  # features x features
    scale: float = 1.0  # scores are divided by it before layers are combined

    def scores(self, features: np.ndarray) -> np.ndarray:
        # (f - m)' P (f - m) = f'Pf - 2 f'Pm + m'Pm: one product with P for every class mean.
        f = np.asarray(features, dtype=np.float64)
        fp = _product(f, self.precision)
        per_class = (fp * f).sum(axis=1)[:, None] - 2 * fp @ self.means.T + self._mean_terms[None, :]
        return np.maximum(per_class.min(axis=1), 0.0) / f.shape[1]

    @cached_property
    def _mean_terms(self) -> np.ndarray:
        return ((self.means @ self.precision) * self.means).sum(axis=1)


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b``; on torch's thread pool when torch ran the model: numpy's BLAS threads, woken
    right after a torch forward pass, made this 10-30x slower than the product itself."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()
    return a @ b


@dataclass(frozen=True)
class ImageGate:
    """The largest scaled Mahalanobis score over the chosen layers; above ``limit``: refused."""

    layers: tuple[LayerStats, ...]
    limit: float
    fitted_on: str = ""  # what it was fitted on, for the model card

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(stats.layer for stats in self.layers)

    def scores(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """One score per image, from each layer's features (N x D)."""
        return np.max([s.scores(features[s.layer]) / s.scale for s in self.layers], axis=0)

    def to_metadata(self) -> dict[str, Any]:
        return {
            "kind": "mahalanobis",
            "layers": [
                {
                    "layer": s.layer,
                    "means": s.means.astype(np.float32).tolist(),
                    "precision": s.precision.astype(np.float32).tolist(),
                    "scale": float(s.scale),
                }
                for s in self.layers
            ],
            "limit": float(self.limit),
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def of(cls, model: Any) -> ImageGate | None:
        """The image gate stored with a loaded model (``xray-train gate``), or None."""
        return cls.from_metadata(model.metadata.get("gate"))

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any] | None) -> ImageGate | None:
        if not meta or meta.get("kind") != "mahalanobis":
            return None
        layers = tuple(
            LayerStats(
                str(m["layer"]),
                np.asarray(m["means"], dtype=np.float64),
                np.asarray(m["precision"], dtype=np.float64),
                float(m["scale"]),
            )
            for m in meta["layers"]
        )
        return cls(layers, float(meta["limit"]), str(meta.get("fitted_on", "")))


def fit_layer(layer: str, features: np.ndarray, labels: np.ndarray) -> LayerStats:
    """Class means and the shrunk shared covariance's inverse of one layer's features."""
    features = np.asarray(features, dtype=np.float64)
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    cov = centred.T @ centred / max(1, len(features) - len(classes))
    cov += SHRINKAGE * np.trace(cov) / len(cov) * np.eye(len(cov))
    return LayerStats(layer, means, np.linalg.inv(cov))


def fit_gate(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    held_out: Mapping[str, np.ndarray],
    *,
    refuse_share: float = 0.01,
    fitted_on: str = "",
) -> ImageGate:
    """The gate over the layers in ``features`` (layer -> N x D, with their class ``labels``).
    Each layer is scaled by its own ``1 - refuse_share`` quantile on ``held_out`` (films of
    the same population the model did not train on, e.g. its validation split), and the
    combined limit is that quantile of the combined score."""
    layers = []
    for name, f in features.items():
        stats = fit_layer(name, f, labels)
        scale = float(np.quantile(stats.scores(held_out[name]), 1 - refuse_share))
        layers.append(LayerStats(name, stats.means, stats.precision, scale))
    gate = ImageGate(tuple(layers), np.inf, fitted_on)
    limit = float(np.quantile(gate.scores(held_out), 1 - refuse_share))
    return ImageGate(gate.layers, limit, fitted_on)


def energy(logits: np.ndarray) -> np.ndarray:
    """The energy score, -logsumexp of the class logits (Liu et al., 2020): higher is less
    familiar. Measured against the Mahalanobis score in docs/gate.md; not used to refuse."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1)
    return -(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)))


def summary_of(how: str) -> int:
    """The grid size of a layer's summary: 0 for channel mean and std, N for ``gridN``."""
    if not how:
        return 0
    if how.startswith("grid") and how[4:].isdigit() and 1 <= int(how[4:]) <= 8:
        return int(how[4:])
    raise ValueError(f"unknown layer summary {how!r}: use none (mean and std) or grid1-grid8")
