"""The drift tests' statistics (worker/drift/stats.py, pure numpy) against scipy's: the same
values, for the chi-square, the two-proportion z test and Kolmogorov-Smirnov."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sp

from worker.drift import stats


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("x", [0.01, 0.7, 3.0, 10.83, 16.3, 40.0])
def test_chi2_survival_matches_scipy(dof: int, x: float):
    assert stats.chi2_sf(x, dof) == pytest.approx(sp.chi2.sf(x, dof), rel=1e-9, abs=1e-15)


def test_chi_square_of_a_table_matches_scipy():
    reference, recent = {"DICOM": 700, "JPEG": 280, "PNG": 20}, {"DICOM": 150, "JPEG": 120, "PNG": 30}
    mix = stats.chi_square(reference, recent)
    chi2, p, dof, _ = sp.chi2_contingency(np.array([[700, 280, 20], [150, 120, 30]]), correction=False)
    assert (mix.chi2, mix.dof) == (pytest.approx(chi2), dof) and mix.p_value == pytest.approx(p)
    assert mix.distance == pytest.approx(0.5 * (abs(0.7 - 0.5) + abs(0.28 - 0.4) + abs(0.02 - 0.1)))


def test_two_proportions_matches_the_z_test():
    test = stats.two_proportions(60, 200, 90, 210)
    pooled = 150 / 410
    z = (90 / 210 - 60 / 200) / np.sqrt(pooled * (1 - pooled) * (1 / 200 + 1 / 210))
    assert test.p_value == pytest.approx(2 * sp.norm.sf(abs(z)))
    assert test.limit(0.001, 0.0) == pytest.approx(sp.norm.isf(0.0005) * test.se, rel=1e-6)
    assert test.limit(0.001, 0.5) == 0.5  # the floor, when larger


def test_ks_distance_and_p_value_match_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.beta(2, 5, 300), rng.beta(2, 4, 500)
    result = sp.ks_2samp(a, b, method="asymp")
    assert stats.ks_distance(a, b) == pytest.approx(result.statistic)
    assert stats.ks_p_value(result.statistic, 300, 500) == pytest.approx(result.pvalue, rel=0.05)
