"""The drift tests' statistics on worked examples, and their false-alarm rate by simulation
(their values against scipy's: tests/integration/test_drift_stats_scipy.py)."""

from __future__ import annotations

import numpy as np
import pytest

from worker.drift import stats
from worker.drift.check import ALARM, compare
from worker.drift.sample import Sample


def test_a_category_one_side_never_had_counts():
    mix = stats.chi_square({"JPEG": 289}, {"JPEG": 40, "DICOM": 60})
    assert mix.reference == {"DICOM": 0.0, "JPEG": 1.0} and mix.distance == pytest.approx(0.6)
    assert mix.p_value < 1e-20


def test_ks_against_stored_percentiles_is_within_a_percentile_of_the_exact_distance():
    rng = np.random.default_rng(2)
    for shift in (0.0, 0.05, 0.2):
        a, b = rng.beta(2, 5, 400) + shift, rng.beta(2, 5, 2000)
        exact = stats.ks_distance(a, b)
        from_percentiles = stats.ks_distance(a, np.quantile(b, stats.PERCENTILES), percentiles=True)
        assert abs(exact - from_percentiles) <= 0.015, (shift, exact, from_percentiles)


def test_ks_limit_is_the_distance_at_alpha():
    limit = stats.ks_limit(0.001, 289, 400)
    assert stats.ks_p_value(limit, 289, 400) == pytest.approx(0.001, rel=1e-3)
    assert 0.1 < limit < 0.2


def _films(rng: np.random.Generator, n: int, positive_rate: float, dicom: float) -> list[tuple]:
    positive = rng.random(n) < positive_rate
    p = np.where(positive, rng.beta(9, 1.5, n), rng.beta(1.2, 9, n))
    fmt = np.where(rng.random(n) < dicom, "DICOM", "JPEG")
    side = np.where(fmt == "DICOM", 2500, rng.integers(800, 2000, n))
    return [(float(pi), bool(pi >= 0.77), f, int(s), int(s)) for pi, f, s in zip(p, fmt, side, strict=True)]


def _sample(rng: np.random.Generator, n: int, *, positive_rate=0.3, dicom=0.6, refusal=0.02) -> Sample:
    refused = int(rng.binomial(n, refusal / (1 - refusal)))
    return Sample.of_films("x", _films(rng, n, positive_rate, dicom), refused=refused)


def test_a_stable_site_rarely_alarms():
    """Reference and window drawn from the same site: any alarm is a false one. At alpha 0.001
    per figure (five figures) and the floors, well under 1% of runs may alarm."""
    rng = np.random.default_rng(3)
    runs, alarms = 400, 0
    for _ in range(runs):
        drift = compare(_sample(rng, 800), _sample(rng, 200))
        alarms += bool(drift.alarms)
    assert alarms / runs <= 0.01, alarms


@pytest.mark.parametrize(
    ("change", "figures"),
    [
        ({"positive_rate": 0.5}, {"positive_rate", "p_distribution"}),
        ({"refusal": 0.08}, {"refusal_rate"}),
        ({"dicom": 0.2}, {"format_mix", "size_mix"}),  # here DICOMs are the large films
    ],
)
def test_a_real_shift_alarms_on_its_figures_only(change: dict, figures: set[str]):
    rng = np.random.default_rng(4)
    caught = {
        name: 0 for name in ("positive_rate", "p_distribution", "refusal_rate", "format_mix", "size_mix")
    }
    for _ in range(50):
        drift = compare(_sample(rng, 800), _sample(rng, 300, **change))
        for f in drift.figures:
            caught[f.name] += f.status == ALARM
    assert {name for name, n in caught.items() if n >= 45} == figures, caught
    assert all(n <= 1 for name, n in caught.items() if name not in figures), caught
