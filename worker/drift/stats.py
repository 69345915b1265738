"""The tests behind the drift figures: pure functions of counts and arrays, no I/O.

- ``two_proportions``: has a rate (positives, refusals) moved? The pooled two-sided z-test.
- ``ks_distance`` / ``ks_limit``: has the distribution of P(PNEUMONIA) moved? The two-sample
  Kolmogorov-Smirnov distance, against the reference's films or its stored percentiles.
- ``chi_square``: has a mix (formats, image sizes) moved? The chi-square test of homogeneity.

Each answers its statistic and the p-value; the drift check (``worker/drift/check.py``)
alarms when the p-value is below alpha *and* the change is larger than a floor that matters
in practice. Only ``math`` and numpy: the worker needs no scipy (the tests check these
against it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# Percentiles 0, 1, ..., 100: how a stored baseline describes a distribution of P.
PERCENTILES = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class Proportions:
    """Two rates and the pooled z-test of their difference."""

    reference: float
    recent: float
    difference: float  # recent - reference
    se: float  # the difference's standard error under "no change" (pooled)
    p_value: float

    def limit(self, alpha: float, floor: float) -> float:
        """The largest |difference| that is no alarm: the test's critical value, or ``floor``."""
        return max(normal_quantile(1 - alpha / 2) * self.se, floor)


def two_proportions(x1: int, n1: int, x2: int, n2: int) -> Proportions:
    """Reference ``x1`` of ``n1``, recent ``x2`` of ``n2`` (both n > 0)."""
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:  # both all 0 or all 1: nothing moved
        return Proportions(p1, p2, p2 - p1, 0.0, 1.0)
    z = (p2 - p1) / se
    return Proportions(p1, p2, p2 - p1, se, math.erfc(abs(z) / math.sqrt(2)))


def normal_quantile(q: float) -> float:
    """The standard normal quantile."""
    return NormalDist().inv_cdf(q)


# -- Kolmogorov-Smirnov -------------------------------------------------------------------


def ks_distance(recent: np.ndarray, reference: np.ndarray, *, percentiles: bool = False) -> float:
    """The largest gap between the two cumulative distributions.

    ``reference`` holds the reference's films, or (``percentiles``) its 101 stored
    percentiles, read as a distribution that is linear between them (a stored baseline)."""
    a = np.sort(np.asarray(recent, dtype=float))
    if not percentiles:
        b = np.sort(np.asarray(reference, dtype=float))
        points = np.concatenate([a, b])
        fa = np.searchsorted(a, points, side="right") / len(a)
        fb = np.searchsorted(b, points, side="right") / len(b)
        return float(np.max(np.abs(fa - fb)))
    q = np.asarray(reference, dtype=float)
    below = np.searchsorted(a, a, side="left") / len(a)  # the step's foot at each film
    above = np.searchsorted(a, a, side="right") / len(a)
    f_ref = _quantile_cdf(q, a)
    at_films = np.maximum(np.abs(above - f_ref), np.abs(below - f_ref))
    at_knots = np.abs(np.searchsorted(a, q, side="right") / len(a) - _quantile_cdf(q, q))
    return float(max(at_films.max(), at_knots.max()))


def _quantile_cdf(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The CDF whose percentiles are ``q``, linear between them (ties take the upper step)."""
    levels = np.linspace(0.0, 1.0, len(q))
    upper = np.searchsorted(q, x, side="right") - 1  # the last knot <= x
    upper = np.clip(upper, 0, len(q) - 1)
    nxt = np.clip(upper + 1, 0, len(q) - 1)
    span = q[nxt] - q[upper]
    frac = np.where(span > 0, (x - q[upper]) / np.where(span > 0, span, 1), 0.0)
    cdf = levels[upper] + frac * (levels[nxt] - levels[upper])
    return np.where(x < q[0], 0.0, np.where(x >= q[-1], 1.0, cdf))


def _ks_scale(n1: int, n2: int) -> float:
    """sqrt(n_e) with Stephens' small-sample correction (Numerical Recipes, kstwo)."""
    root = math.sqrt(n1 * n2 / (n1 + n2))
    return root + 0.12 + 0.11 / root


def ks_p_value(distance: float, n1: int, n2: int) -> float:
    """The asymptotic (Kolmogorov) p-value of a two-sample distance."""
    return kolmogorov_sf(_ks_scale(n1, n2) * distance)


def ks_limit(alpha: float, n1: int, n2: int) -> float:
    """The distance whose p-value is ``alpha``."""
    lo, hi = 0.0, 10.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if kolmogorov_sf(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi / _ks_scale(n1, n2)


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution: 2 sum (-1)^(k-1) exp(-2 k^2 x^2)."""
    if x < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2 * k * k * x * x)
        total += term if k % 2 else -term
        if term < 1e-16:
            break
    return min(max(2 * total, 0.0), 1.0)


# -- chi-square ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """Two mixes of categories, the chi-square test of homogeneity, and how far apart they are."""

    reference: dict[str, float]  # shares
    recent: dict[str, float]
    distance: float  # total variation: half the summed |share differences|, 0..1
    chi2: float
    dof: int
    p_value: float


def chi_square(reference: Mapping[str, int], recent: Mapping[str, int]) -> Mix:
    """Counts per category in each sample (both non-empty)."""
    keys = sorted(k for k in set(reference) | set(recent) if reference.get(k, 0) + recent.get(k, 0) > 0)
    table = np.array([[reference.get(k, 0) for k in keys], [recent.get(k, 0) for k in keys]], dtype=float)
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    shares = table / rows[:, None]
    distance = float(np.abs(shares[0] - shares[1]).sum() / 2)
    dof = len(keys) - 1
    if dof == 0:
        chi2, p = 0.0, 1.0
    else:
        expected = np.outer(rows, cols) / table.sum()
        chi2 = float(((table - expected) ** 2 / expected).sum())
        p = chi2_sf(chi2, dof)
    return Mix(
        dict(zip(keys, shares[0].round(6).tolist(), strict=True)),
        dict(zip(keys, shares[1].round(6).tolist(), strict=True)),
        distance,
        chi2,
        dof,
        p,
    )


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for chi-square with ``dof`` degrees of freedom: the regularised upper gamma
    Q(dof/2, x/2), by the exact recurrence Q(a+1, y) = Q(a, y) + y^a e^-y / Gamma(a+1)."""
    if x <= 0:
        return 1.0
    y = x / 2
    if dof % 2:
        a, q = 0.5, math.erfc(math.sqrt(y))
    else:
        a, q = 1.0, math.exp(-y)
    while a < dof / 2:
        q += math.exp(a * math.log(y) - y - math.lgamma(a + 1))
        a += 1
    return min(q, 1.0)
