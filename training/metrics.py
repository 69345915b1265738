"""Binary screening metrics: pure functions over labels and probabilities (numpy only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Confusion:
    """Counts for the positive class: true/false positives and negatives."""

    tp: int
    fp: int
    tn: int
    fn: int

    @classmethod
    def at(cls, y_true: np.ndarray, p_pos: np.ndarray, threshold: float) -> Confusion:
        y, pred = np.asarray(y_true).astype(bool), np.asarray(p_pos) >= threshold
        return cls(
            tp=int((pred & y).sum()),
            fp=int((pred & ~y).sum()),
            tn=int((~pred & ~y).sum()),
            fn=int((~pred & y).sum()),
        )

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def matrix(self) -> list[list[int]]:
        """Rows: actual (negative, positive); columns: predicted (negative, positive)."""
        return [[self.tn, self.fp], [self.fn, self.tp]]

    def rates(self) -> dict[str, float]:
        sens, spec = _ratio(self.tp, self.tp + self.fn), _ratio(self.tn, self.tn + self.fp)
        prec = _ratio(self.tp, self.tp + self.fp)
        f1 = _ratio(2 * prec * sens, prec + sens) if not (np.isnan(prec) or np.isnan(sens)) else float("nan")
        return {
            "accuracy": _ratio(self.tp + self.tn, self.n),
            "balanced_accuracy": (sens + spec) / 2,
            "sensitivity": sens,
            "specificity": spec,
            "precision": prec,
            "npv": _ratio(self.tn, self.tn + self.fn),
            "f1": f1,
        }

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def roc_curve(y_true: np.ndarray, p_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and the thresholds that give them."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(p_pos, dtype=float)
    thresholds = np.r_[np.inf, np.unique(p)[::-1]]
    tpr = np.array([(p[y] >= t).sum() for t in thresholds]) / max(y.sum(), 1)
    fpr = np.array([(p[~y] >= t).sum() for t in thresholds]) / max((~y).sum(), 1)
    return fpr, tpr, thresholds


def roc_auc(y_true: np.ndarray, p_pos: np.ndarray) -> float:
    """Area under the ROC curve: the chance a positive outranks a negative (ties count half)."""
    y = np.asarray(y_true).astype(bool)
    pos, neg = np.asarray(p_pos, dtype=float)[y], np.asarray(p_pos, dtype=float)[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.r_[pos, neg], kind="mergesort")
    ranks = np.empty(len(order))
    values = np.r_[pos, neg][order]
    # average ranks over ties
    _, first, counts = np.unique(values, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def threshold_for_sensitivity(y_true: np.ndarray, p_pos: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity on the sample reaches ``target`` (best specificity
    there), placed between two distinct scores, never on a film's score
    (``training.operating.choose`` with the ``point`` rule)."""
    from training.operating import choose

    return choose(y_true, p_pos, target, "point", min_specificity=0.0, estimate_needs=False).threshold


def youden_threshold(y_true: np.ndarray, p_pos: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1."""
    fpr, tpr, thresholds = roc_curve(y_true, p_pos)
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]) if np.isfinite(thresholds[best]) else 1.0


def summarize(y_true: np.ndarray, p_pos: np.ndarray, threshold: float) -> dict:
    """Every figure we report, at one threshold."""
    confusion = Confusion.at(y_true, p_pos, threshold)
    return {
        "n": confusion.n,
        "positives": int(np.asarray(y_true).astype(bool).sum()),
        "threshold": float(threshold),
        **confusion.rates(),
        "roc_auc": roc_auc(y_true, p_pos),
        "confusion": confusion.as_dict(),
    }
