"""worker.model.calibration: fitting and applying a site's calibration of P."""

from __future__ import annotations

import numpy as np
import pytest

from training.site_check import expected_calibration_error
from worker.model.calibration import Calibration, cross_fitted, fit_calibration, margins_of


def sample(scale: float, bias: float, n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Margins, and labels drawn so that sigmoid(scale * z + bias) is the true P."""
    rng = np.random.default_rng(seed)
    z = rng.normal(2.0, 4.0, n)
    y = rng.random(n) < 1 / (1 + np.exp(-(scale * z + bias)))
    return z, y


def test_platt_recovers_the_scale_and_bias_the_labels_were_drawn_with():
    z, y = sample(0.4, -1.5)
    cal = fit_calibration(z, y, "platt")
    assert cal.scale == pytest.approx(0.4, abs=0.03) and cal.bias == pytest.approx(-1.5, abs=0.1)


def test_temperature_has_no_bias_and_finds_the_temperature():
    z, y = sample(0.5, 0.0)
    cal = fit_calibration(z, y, "temperature")
    assert cal.bias == 0.0 and 1 / cal.scale == pytest.approx(2.0, rel=0.08)


def test_calibration_cuts_the_ece_of_an_overconfident_model_on_held_out_patients():
    z, y = sample(0.3, -1.0, n=3000)
    raw = 1 / (1 + np.exp(-z))
    patients = np.arange(len(z)) // 2  # two films a patient
    before = expected_calibration_error(y, raw)
    after = expected_calibration_error(y, cross_fitted(z, y, patients, "platt"))
    assert before > 0.15 and after < 0.03


def test_a_monotone_map_keeps_the_ranking_so_a_threshold_flags_the_same_films():
    z, y = sample(0.3, -1.0, n=500)
    cal = fit_calibration(z, y)
    p = cal.positive(z)
    assert (np.argsort(p, kind="stable") == np.argsort(z, kind="stable")).all()
    t_raw = 1.5
    t_cal = float(cal.positive(np.array([t_raw]))[0])
    assert ((z >= t_raw) == (p >= t_cal)).all()


@pytest.mark.parametrize("positive_index", [0, 1])
def test_probabilities_of_two_class_logits_sum_to_one_at_the_right_index(positive_index: int):
    cal = Calibration("platt", 0.5, 0.2)
    logits = np.array([[1.0, 3.0], [2.0, -1.0], [0.0, 0.0]])
    if positive_index == 0:
        logits = logits[:, ::-1]
    probs = cal.probabilities(logits, positive_index)
    assert np.allclose(probs.sum(axis=1), 1)
    margin = np.array([2.0, -3.0, 0.0])
    assert np.allclose(probs[:, positive_index], 1 / (1 + np.exp(-(0.5 * margin + 0.2))))


def test_margins_of_inverts_the_softmax_and_saturates_finitely():
    z = np.array([-20.0, -3.0, 0.0, 4.5, 25.0])
    assert np.allclose(margins_of(1 / (1 + np.exp(-z))), z, atol=1e-6)
    assert np.isfinite(margins_of(np.array([0.0, 1.0]))).all()


def test_metadata_round_trips_and_unknown_methods_are_refused():
    cal = Calibration("platt", 0.41, -0.7, "site: 292 films")
    assert Calibration.from_metadata(cal.to_metadata()) == cal
    with pytest.raises(ValueError, match="unknown calibration method"):
        Calibration.from_metadata({"method": "isotonic", "scale": 1})
    with pytest.raises(ValueError, match="both classes"):
        fit_calibration(np.zeros(4), np.ones(4))


def test_a_perfectly_separated_sample_still_gives_a_finite_fit():
    z = np.array([-3.0, -2.0, 2.0, 3.0])
    cal = fit_calibration(z, np.array([0, 0, 1, 1]))
    assert np.isfinite([cal.scale, cal.bias]).all()


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_a_model_that_ranks_backwards_gets_the_flattest_increasing_map_never_a_reversed_one(method: str):
    z, y = sample(-0.5, 0.3)  # higher margins are less often positive
    cal = fit_calibration(z, y, method)
    assert cal.scale > 0
    p = cal.positive(z)
    assert (np.diff(p[np.argsort(z)]) >= 0).all()
    if method == "platt":  # flat: about the share of positives everywhere
        assert abs(p.mean() - y.mean()) < 0.02 and p.max() - p.min() < 0.1
