"""Calibrated probabilities: P(positive) that means what it says at a site.

A classifier trained on one population is rarely calibrated on another: the shipped model,
trained on one hospital's children, says 0.9 for films of which far fewer are positive at
the next. The raw output keeps its ranking (its ROC AUC); what is off is the scale. So the
fix is a monotone map of the model's **logit margin** ``z = logit(positive) - logit(other)``:

- **temperature scaling** (Guo et al., ICML 2017): ``P = sigmoid(z / T)``, one parameter;
- **Platt scaling** (Platt, 1999): ``P = sigmoid(a z + b)``, a temperature and a bias, which
  also corrects a shift in the share of positives between populations.

Both are fitted on a site's labelled films (``xray-train site-check --store``) by maximum
likelihood and stored in the model's metadata (``calibration``). Being monotone, neither
changes which films a threshold flags: the stored threshold is chosen on the calibrated
scale. Pure numpy, no I/O; ``worker.model.predictor`` applies it to every batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("platt", "temperature")
RIDGE = 1e-4  # keeps the fit finite on a perfectly separated sample
MARGIN_LIMIT = 30.0  # a logit margin beyond this carries no more information
MIN_SCALE = 1e-3  # the flattest map kept: a calibration never reverses the model's ranking


@dataclass(frozen=True)
class Calibration:
    """``P(positive) = sigmoid(scale * z + bias)`` of the logit margin ``z``."""

    method: str
    scale: float
    bias: float = 0.0
    fitted_on: str = ""

    def positive(self, margins: np.ndarray) -> np.ndarray:
        """Calibrated P(positive) of each logit margin."""
        return _sigmoid(self.scale * np.asarray(margins, dtype=np.float64) + self.bias)

    def probabilities(self, logits: np.ndarray, positive_index: int) -> np.ndarray:
        """Calibrated class probabilities (N x 2) of two-class logits (N x 2)."""
        logits = np.asarray(logits, dtype=np.float64)
        p = self.positive(logits[:, positive_index] - logits[:, 1 - positive_index])
        out = np.empty_like(logits)
        out[:, positive_index], out[:, 1 - positive_index] = p, 1.0 - p
        return out

    def to_metadata(self) -> dict[str, Any]:
        return {"method": self.method, "scale": self.scale, "bias": self.bias, "fitted_on": self.fitted_on}

    @classmethod
    def of(cls, model: Any) -> Calibration | None:
        """The calibration stored with a loaded model, or None (its own softmax then)."""
        meta = model.metadata.get("calibration")
        if not meta:
            return None
        if len(model.vocab) != 2:
            raise ValueError("a stored calibration needs a two-class model")
        return cls.from_metadata(meta)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Calibration:
        method = str(meta.get("method", ""))
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")
        return cls(method, float(meta["scale"]), float(meta.get("bias", 0.0)), str(meta.get("fitted_on", "")))


def margins_of(p_pos: np.ndarray) -> np.ndarray:
    """The logit margin behind two-class softmax probabilities (``logit(p)``), clipped where
    float precision saturates."""
    p = np.clip(np.asarray(p_pos, dtype=np.float64), 1e-13, 1 - 1e-13)
    return np.clip(np.log(p) - np.log1p(-p), -MARGIN_LIMIT, MARGIN_LIMIT)


def fit_calibration(
    margins: np.ndarray, y_true: np.ndarray, method: str = "platt", *, fitted_on: str = ""
) -> Calibration:
    """The maximum-likelihood ``method`` calibration of logit ``margins`` to labels (1 = positive),
    by Newton's method on the (convex) log loss."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")
    z = np.clip(np.asarray(margins, dtype=np.float64), -MARGIN_LIMIT, MARGIN_LIMIT)
    y = np.asarray(y_true, dtype=np.float64)
    if len(z) == 0 or y.min() == y.max():
        raise ValueError("calibration needs films of both classes")
    x = np.stack([z, np.ones_like(z)], axis=1) if method == "platt" else z[:, None]
    w = _newton(x, y, np.eye(x.shape[1])[0])  # start from the model as it is
    if w[0] < MIN_SCALE:
        # A model that ranks this sample backwards would get a decreasing map: keep it monotone
        # (the flattest increasing one), so P says little, and the site check says "not fit".
        w[0] = MIN_SCALE
        if method == "platt":
            w[1] = _newton(np.ones((len(z), 1)), y, np.zeros(1), offset=MIN_SCALE * z)[0]
    return Calibration(method, float(w[0]), float(w[1]) if method == "platt" else 0.0, fitted_on)


def _newton(x: np.ndarray, y: np.ndarray, w: np.ndarray, offset: np.ndarray | float = 0.0) -> np.ndarray:
    """The weights minimising the log loss of ``sigmoid(x @ w + offset)``: Newton's method with a
    backtracking line search (the loss is convex)."""
    w = w.astype(np.float64).copy()

    def loss(w: np.ndarray) -> float:
        s = x @ w + offset
        return float(np.sum(np.logaddexp(0.0, s) - y * s) + RIDGE / 2 * w @ w)

    for _ in range(100):
        p = _sigmoid(x @ w + offset)
        grad = x.T @ (p - y) + RIDGE * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + RIDGE * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        before, t = loss(w), 1.0
        while loss(w - t * step) > before - 1e-4 * t * grad @ step and t > 1e-8:
            t /= 2
        w = w - t * step
        if np.abs(t * step).max() < 1e-10:
            break
    return w


def cross_fitted(
    margins: np.ndarray, y_true: np.ndarray, groups: np.ndarray, method: str = "platt", folds: int = 5
) -> np.ndarray:
    """Calibrated P of every film from a calibration fitted on the other folds of patients: what
    the calibration delivers on patients it was not fitted on."""
    z, y = np.asarray(margins, dtype=np.float64), np.asarray(y_true)
    _, cluster = np.unique(np.asarray(groups), return_inverse=True)
    order = np.random.default_rng(0).permutation(cluster.max() + 1)
    fold = order[cluster.reshape(-1)] % folds
    out = np.empty(len(z))
    for k in range(folds):
        held = fold == k
        if not held.any():
            continue
        out[held] = fit_calibration(z[~held], y[~held], method).positive(z[held])
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|
