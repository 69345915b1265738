"""Choosing an operating point (a threshold on P(positive)) from a labelled sample.

Two rules, both over the same candidate thresholds:

- ``wilson`` (the default for ``--store``): the highest threshold at which the **lower bound**
  of the 95% Wilson interval of sensitivity reaches the target. Chosen so, the sensitivity holds
  on new patients with 97.5% confidence (one-sided), at the cost of some specificity.
- ``point``: the highest threshold at which the sample's sensitivity itself reaches the target
  (the rule before December 2026). On new patients it falls short about half the time.

**No threshold sits on a film.** The candidates are the midpoints between two neighbouring
distinct scores of the sample, never a score itself: a score that differs by rounding between
runtimes (torch, ONNX fp32, int8) cannot change which side of the threshold a film of the sample
falls on. Scores closer together than ``2 * MARGIN`` count as one, so no film lies within
``MARGIN`` of a chosen threshold.

**Refusals.** An operating point is *refused* (not deployable) when its sensitivity interval
cannot reach the target on this sample, or its specificity interval's lower bound is below
``min_specificity``. ``needs`` then estimates how many more labelled films of each class would
make it deployable, assuming the sample's rates hold: the smallest sample at which some
threshold's two lower bounds both clear their bars.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

RULES = ("wilson", "point")
MARGIN = 1e-6  # no film of the sample within this of a chosen threshold
MIN_SPECIFICITY = 0.5
Z_95 = 1.959963984540054  # the normal quantile for a two-sided 95% interval
MAX_FILMS = 1_000_000  # the largest sample ``needs`` looks for


def wilson_bounds(
    successes: np.ndarray | float, n: np.ndarray | float, z: float = Z_95
) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of ``successes / n`` (vectorised; floats allowed for
    ``successes``, so that a rate can be projected onto a larger sample): 0 and 1 at the edges
    (no success, all successes), (0, 1) where n is 0."""
    k, m = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(m > 0, k / np.where(m > 0, m, 1), 0.0)
        z2 = z * z
        centre = (p + z2 / (2 * m)) / (1 + z2 / m)
        half = z / (1 + z2 / m) * np.sqrt(p * (1 - p) / m + z2 / (4 * m * m))
        lo = np.where((m > 0) & (k > 0), np.maximum(centre - half, 0.0), 0.0)
        hi = np.where((m > 0) & (k < m), np.minimum(centre + half, 1.0), 1.0)
    return lo, hi


def wilson_lower(successes: np.ndarray | float, n: np.ndarray | float, z: float = Z_95) -> np.ndarray:
    """The lower bound of the Wilson score interval (``wilson_bounds``): 0 where n is 0."""
    return wilson_bounds(successes, n, z)[0]


def candidates(p_pos: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    """Candidate thresholds, highest first: the midpoint of each gap of at least ``2 * margin``
    between neighbouring distinct scores, and one below the lowest score (flag every film)."""
    v = np.unique(np.asarray(p_pos, dtype=float))  # ascending
    if len(v) == 0:
        return np.array([0.0])
    gaps = np.diff(v)
    mids = (v[:-1] + v[1:])[gaps >= 2 * margin] / 2
    lowest = v[0] / 2 if v[0] >= 2 * margin else v[0] - margin  # below every score
    return np.r_[mids[::-1], lowest]


def _counts(y: np.ndarray, p: np.ndarray, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true positives, true negatives) at each cut: a film is positive when p >= cut."""
    pos, neg = np.sort(p[y]), np.sort(p[~y])
    tp = len(pos) - np.searchsorted(pos, cuts, side="left")
    tn = np.searchsorted(neg, cuts, side="left")
    return tp, tn


def _films_needed(rate: float, bar: float) -> int | None:
    """The smallest sample whose Wilson lower bound at ``rate`` reaches ``bar``; None if none does."""
    if rate <= bar:
        return None
    lo, hi = 1, MAX_FILMS
    if wilson_lower(rate * hi, hi) < bar:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if wilson_lower(rate * mid, mid) >= bar:
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass(frozen=True)
class OperatingPoint:
    """A chosen threshold, the counts behind it and whether it may be deployed."""

    threshold: float
    rule: str
    target_sensitivity: float
    min_specificity: float
    tp: int
    positives: int
    tn: int
    negatives: int
    sensitivity_lower: float
    specificity_lower: float
    reached: bool = True  # False: no threshold met the rule here, so this is the point rule's
    refused: str | None = None  # why it may not be deployed; None when it may
    needs: dict[str, int] | None = None  # more films per class that would make it deployable

    @property
    def sensitivity(self) -> float:
        return self.tp / self.positives if self.positives else float("nan")

    @property
    def specificity(self) -> float:
        return self.tn / self.negatives if self.negatives else float("nan")

    @property
    def deployable(self) -> bool:
        return self.refused is None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sensitivity": self.sensitivity, "specificity": self.specificity}


def choose(
    y_true: np.ndarray,
    p_pos: np.ndarray,
    target_sensitivity: float,
    rule: str = "wilson",
    *,
    min_specificity: float = MIN_SPECIFICITY,
    estimate_needs: bool = True,
) -> OperatingPoint:
    """The operating point ``rule`` picks on this sample (see the module's docstring)."""
    if rule not in RULES:
        raise ValueError(f"unknown operating-point rule {rule!r}: use one of {', '.join(RULES)}")
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(p_pos, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0:
        raise ValueError("no positive examples: cannot pick a threshold for sensitivity")
    cuts = candidates(p)
    tp, tn = _counts(y, p, cuts)
    sens_lo = wilson_lower(tp, n_pos)
    spec_lo = wilson_lower(tn, n_neg)
    reaches_point = tp >= math.ceil(target_sensitivity * n_pos - 1e-9)
    reaches = sens_lo >= target_sensitivity if rule == "wilson" else reaches_point
    refused = None
    reached = bool(reaches.any())
    if reached:
        i = int(np.argmax(reaches))  # the highest cut that reaches it
    else:  # the wilson rule on too few positives: report the point rule's cut, refused
        i = int(np.argmax(reaches_point))
        refused = (
            f"with {n_pos} positive films the lower bound of sensitivity cannot reach "
            f"{target_sensitivity:g} at any threshold (at most {float(sens_lo.max()):.3f})"
        )
    if refused is None and spec_lo[i] < min_specificity:
        refused = (
            f"at the threshold reaching sensitivity {target_sensitivity:g}, the lower bound of "
            f"specificity is {float(spec_lo[i]):.3f}, below {min_specificity:g}"
        )
    needs = None
    if refused and estimate_needs:
        needs = _needs(tp, tn, n_pos, n_neg, target_sensitivity, min_specificity, rule)
    return OperatingPoint(
        threshold=float(cuts[i]),
        rule=rule,
        target_sensitivity=float(target_sensitivity),
        min_specificity=float(min_specificity),
        tp=int(tp[i]),
        positives=n_pos,
        tn=int(tn[i]),
        negatives=n_neg,
        sensitivity_lower=float(sens_lo[i]),
        specificity_lower=float(spec_lo[i]),
        reached=reached,
        refused=refused,
        needs=needs,
    )


def _needs(
    tp: np.ndarray,
    tn: np.ndarray,
    n_pos: int,
    n_neg: int,
    target: float,
    min_specificity: float,
    rule: str,
) -> dict[str, int] | None:
    """More films per class at which some threshold would be deployable, if the sample's rates at
    that threshold held; the threshold needing the fewest films in all. None: no threshold here
    has sensitivity above the target and specificity above the bar, so more films will not do."""
    best: tuple[int, int] | None = None
    for k_tp, k_tn in {(int(a), int(b)) for a, b in zip(tp, tn, strict=True)}:
        sens, spec = k_tp / n_pos, (k_tn / n_neg if n_neg else 0.0)
        point_ok = n_pos if sens >= target else None
        want_pos = point_ok if rule == "point" else _films_needed(sens, target)
        want_neg = _films_needed(spec, min_specificity)
        if want_pos is None or want_neg is None:
            continue
        extra = (max(0, want_pos - n_pos), max(0, want_neg - n_neg))
        if best is None or sum(extra) < sum(best):
            best = extra
    if best is None:
        return None
    return {"positives": best[0], "negatives": best[1]}


def describe(point: OperatingPoint, positive: str = "positive", negative: str = "negative") -> str:
    """One line: the rule, the threshold and its counts, and why it is refused if it is."""
    rule = "lower 95% bound of sensitivity" if point.rule == "wilson" else "sensitivity on the sample"
    if not point.reached:
        rule = "sensitivity on the sample, since no threshold meets the lower-bound rule here"
    line = (
        f"threshold {point.threshold:.4f} ({rule} >= {point.target_sensitivity:g}): sensitivity "
        f"{point.sensitivity:.3f} ({point.tp}/{point.positives}, lower bound {point.sensitivity_lower:.3f}), "
        f"specificity {point.specificity:.3f} ({point.tn}/{point.negatives}, lower bound "
        f"{point.specificity_lower:.3f})"
    )
    if point.refused is None:
        return line
    line += f"; REFUSED: {point.refused}"
    return line + "; " + needs_words(point.needs, point.positives + point.negatives, positive, negative)


def needs_words(needs: dict[str, int] | None, films: int, positive: str, negative: str) -> str:
    """What a refused operating point would take, in words (``films``: the sample's size)."""
    if needs is None:
        return (
            "more films of this site would not help at these rates: the model does not separate "
            "them well enough"
        )
    text = (
        f"it would need about {needs['positives']:,} more {positive} and {needs['negatives']:,} more "
        f"{negative} labelled films, if today's rates hold"
    )
    if needs["positives"] + needs["negatives"] > 10 * films:
        text += " (more than a site can label: lower the target, or adapt a model that separates them better)"
    return text
