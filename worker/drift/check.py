"""The drift check: the recent window against a reference, figure by figure, each with its
limit and verdict (docs/drift.md says why each limit is what it is).

A figure alarms when its change is both unlikely by chance (p-value below ``alpha``) and
larger than a floor that matters in practice: with thousands of films a week, a test alone
would flag changes of a point or two that no one would act on.

| figure | test | the change | floor |
|---|---|---|---|
| positive rate | pooled two-proportion z-test | difference of rates | 5 points |
| P(PNEUMONIA) distribution | two-sample Kolmogorov-Smirnov | KS distance D | 0.10 |
| the gate's refusal rate | pooled two-proportion z-test | difference of rates | 2 points |
| format mix (PNG/JPEG/DICOM) | chi-square test of homogeneity | total variation distance | 0.10 |
| image size mix (long side) | chi-square test of homogeneity | total variation distance | 0.10 |

A figure with fewer than ``min_films`` films on either side is not judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.drift import stats
from worker.drift.sample import Sample

ALPHA = 0.001  # per figure: five figures, a false alarm about once in 200 runs at most
MIN_FILMS = 30
FLOORS = {
    "positive_rate": 0.05,
    "p_distribution": 0.10,
    "refusal_rate": 0.02,
    "format_mix": 0.10,
    "size_mix": 0.10,
}
TITLES = {
    "positive_rate": "Positive rate",
    "p_distribution": "P(PNEUMONIA) distribution",
    "refusal_rate": "Gate refusal rate",
    "format_mix": "Format mix",
    "size_mix": "Image size mix (long side, px)",
}
OK, ALARM, TOO_FEW = "ok", "ALARM", "too few films"


@dataclass(frozen=True)
class Figure:
    """One figure's verdict. ``value`` is the change (a difference of rates, a KS distance, a
    total variation distance) and ``limit`` the largest change that is no alarm."""

    name: str
    reference: str  # as shown in the table
    recent: str
    change: str
    limit_text: str
    status: str
    value: float | None = None
    limit: float | None = None
    p_value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return TITLES[self.name]

    @property
    def alarm(self) -> bool:
        return self.status == ALARM


@dataclass(frozen=True)
class Drift:
    reference: Sample
    recent: Sample
    figures: list[Figure]
    alpha: float
    min_films: int

    @property
    def alarms(self) -> list[Figure]:
        return [f for f in self.figures if f.alarm]

    @property
    def judged(self) -> bool:
        """Whether any figure had films enough to be judged."""
        return any(f.status != TOO_FEW for f in self.figures)


def compare(reference: Sample, recent: Sample, *, alpha: float = ALPHA, min_films: int = MIN_FILMS) -> Drift:
    """Every figure of ``recent`` against ``reference``."""
    rule = (alpha, min_films)
    figures = [
        _rate(
            "positive_rate",
            (reference.positives, reference.results),
            (recent.positives, recent.results),
            *rule,
        ),
        _distribution(reference, recent, *rule),
        _rate("refusal_rate", (reference.refused, reference.gated), (recent.refused, recent.gated), *rule),
        _mix("format_mix", reference.formats, recent.formats, *rule),
        _mix("size_mix", reference.sizes, recent.sizes, *rule),
    ]
    return Drift(reference, recent, figures, alpha, min_films)


def _too_few(name: str, n_ref: int, n_recent: int, reference: str = "", recent: str = "") -> Figure:
    return Figure(
        name,
        reference or f"n={n_ref}",
        recent or f"n={n_recent}",
        "",
        "",
        TOO_FEW,
        details={"reference_films": n_ref, "recent_films": n_recent},
    )


def _rate(
    name: str, reference: tuple[int, int], recent: tuple[int, int], alpha: float, min_films: int
) -> Figure:
    """A rate: (events, films) on each side."""
    (x1, n1), (x2, n2) = reference, recent
    shown = (_pct(x1, n1), _pct(x2, n2))
    if min(n1, n2) < min_films:
        return _too_few(name, n1, n2, *shown)
    test = stats.two_proportions(x1, n1, x2, n2)
    limit = test.limit(alpha, FLOORS[name])
    return Figure(
        name,
        *shown,
        f"{100 * test.difference:+.1f} points",
        f"±{100 * limit:.1f} points",
        ALARM if abs(test.difference) > limit else OK,
        value=test.difference,
        limit=limit,
        p_value=test.p_value,
        details={
            "reference_rate": test.reference,
            "recent_rate": test.recent,
            "reference": [x1, n1],
            "recent": [x2, n2],
            "floor": FLOORS[name],
        },
    )


def _distribution(reference: Sample, recent: Sample, alpha: float, min_films: int) -> Figure:
    n1, n2 = reference.results, recent.results
    shown = (_p_summary(reference), _p_summary(recent))
    if min(n1, n2) < min_films or recent.p_values is None:
        return _too_few("p_distribution", n1, n2, *shown)
    if reference.p_values is not None:
        distance = stats.ks_distance(recent.p_values, reference.p_values)
    else:  # a stored baseline: its percentiles
        distance = stats.ks_distance(recent.p_values, reference.p_quantiles, percentiles=True)
    limit = max(stats.ks_limit(alpha, n1, n2), FLOORS["p_distribution"])
    return Figure(
        "p_distribution",
        *shown,
        f"KS D {distance:.3f}",
        f"D {limit:.3f}",
        ALARM if distance > limit else OK,
        value=distance,
        limit=limit,
        p_value=stats.ks_p_value(distance, n1, n2),
        details={
            "reference_quartiles": _quartiles(reference),
            "recent_quartiles": _quartiles(recent),
            "reference_mean": reference.p_mean,
            "recent_mean": recent.p_mean,
            "floor": FLOORS["p_distribution"],
        },
    )


def _mix(
    name: str, reference: dict[str, int], recent: dict[str, int], alpha: float, min_films: int
) -> Figure:
    """A mix: films per category on each side."""
    n1, n2 = sum(reference.values()), sum(recent.values())
    if min(n1, n2) < min_films:
        return _too_few(name, n1, n2, _shares(reference), _shares(recent))
    test = stats.chi_square(reference, recent)
    floor = FLOORS[name]
    return Figure(
        name,
        _shares(reference),
        _shares(recent),
        f"TV {test.distance:.2f} (p {test.p_value:.2g})",
        f"TV {floor:.2f}, p < {alpha:g}",
        ALARM if test.p_value < alpha and test.distance > floor else OK,
        value=test.distance,
        limit=floor,
        p_value=test.p_value,
        details={
            "reference_shares": test.reference,
            "recent_shares": test.recent,
            "chi2": test.chi2,
            "dof": test.dof,
        },
    )


def _pct(x: int, n: int) -> str:
    return f"{100 * x / n:.1f}% of {n}" if n else "no films"


def _p_summary(sample: Sample) -> str:
    if not sample.results:
        return "no films"
    q = sample.p_quantiles
    return f"median {q[50]:.2f}, mean {sample.p_mean:.2f}"


def _quartiles(sample: Sample) -> list[float] | None:
    if not len(sample.p_quantiles):
        return None
    return [round(float(v), 4) for v in np.asarray(sample.p_quantiles)[[25, 50, 75]]]


def _shares(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "no films"
    top = sorted(counts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k.removesuffix(' px')} {100 * v / total:.0f}%" for k, v in top)
