"""Choosing an operating point (training/operating.py): no threshold on a film's score, the
Wilson rule's sensitivity holds on new patients, refusals say what they would need."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.operating import MARGIN, candidates, choose, describe, needs_words, wilson_lower
from training.site_check import wilson_interval

scores = st.lists(
    st.one_of(
        st.floats(0, 1, allow_nan=False),
        st.sampled_from([0.0, 1.0, 0.5, 0.5 + 1e-7, 0.5 - 1e-7, 0.7688439661584483]),
    ),
    min_size=2,
    max_size=60,
)


@given(scores, st.data())
@settings(max_examples=200, deadline=None)
def test_no_film_sits_within_the_margin_of_a_chosen_threshold(p: list[float], data: st.DataObject):
    y = np.array(data.draw(st.lists(st.booleans(), min_size=len(p), max_size=len(p))))
    if not y.any():
        y[0] = True
    p = np.array(p)
    target = data.draw(st.sampled_from([0.5, 0.8, 0.9, 0.95]))
    for rule in ("point", "wilson"):
        t = choose(y, p, target, rule, min_specificity=0.0).threshold
        assert np.abs(p - t).min() > MARGIN * 0.999, (rule, t)


def test_a_change_of_1e9_in_every_p_moves_no_label():
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.6
    p = np.clip(np.where(y, rng.beta(5, 2, 300), rng.beta(2, 5, 300)), 0, 1)
    p[:5] = p[5]  # ties
    for rule in ("point", "wilson"):
        t = choose(y, p, 0.95, rule).threshold
        labels = p >= t
        assert ((p + 1e-9) >= t).tolist() == labels.tolist()
        assert ((p - 1e-9) >= t).tolist() == labels.tolist()


def test_the_old_rule_on_a_film_flips_that_film_under_a_rounding_change():
    """Why the threshold must not be a score: the point rule as it was (threshold = the k-th
    positive's score) labels that film differently once its P moves by one rounding step."""
    y = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    p = np.array([0.9, 0.8, 0.7688439661584483, 0.3, 0.5, 0.1])
    old = 0.7688439661584483  # the shipped threshold before this fix
    assert (p[2] >= old) != (np.nextafter(p[2], 0) >= old)
    new = choose(y, p, 0.75, "point").threshold
    assert (p[2] >= new) == (np.nextafter(p[2], 0) >= new) == (p[2] + 1e-9 >= new)


def test_candidates_are_midpoints_and_one_below_every_film():
    p = np.array([0.2, 0.4, 0.4, 0.8])
    assert candidates(p).tolist() == pytest.approx([0.6, 0.3, 0.1])
    assert candidates(np.array([0.5, 0.5 + 1e-7])).tolist() == pytest.approx([0.25])  # one score
    assert candidates(np.array([0.0, 0.5]))[-1] < 0.0  # below a zero score too


def test_wilson_lower_is_the_site_checks_interval():
    for k, n in ((8, 10), (0, 10), (10, 10), (166, 175), (1, 3)):
        assert wilson_lower(k, n) == pytest.approx(wilson_interval(k, n)[0], abs=1e-12)
    assert wilson_lower(0, 0) == 0.0


def test_the_wilson_rule_takes_the_highest_threshold_whose_lower_bound_reaches_the_target():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(175), np.zeros(117)].astype(bool)
    p = np.r_[rng.beta(5, 2, 175), rng.beta(2, 5, 117)]
    point = choose(y, p, 0.95, "wilson")
    assert point.sensitivity_lower >= 0.95 and point.deployable
    assert point.sensitivity_lower == pytest.approx(wilson_lower(point.tp, 175))
    higher = p[p > point.threshold].min() + 1e-9  # one positive fewer
    assert wilson_lower((p[y] >= higher).sum(), 175) < 0.95
    old = choose(y, p, 0.95, "point")
    assert old.threshold > point.threshold and old.sensitivity >= 0.95 > old.sensitivity_lower
    assert point.specificity <= old.specificity  # what the lower bound costs
    assert "lower 95% bound of sensitivity >= 0.95" in describe(point)


def test_too_few_positives_are_refused_with_what_it_would_take():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(17), np.zeros(12)].astype(bool)
    p = np.r_[rng.beta(8, 2, 17), rng.beta(2, 8, 12)]  # well separated: only the count is short
    point = choose(y, p, 0.95, "wilson")
    assert not point.deployable and "17 positive films" in point.refused
    assert point.needs is not None and point.needs["positives"] >= 73 - 17
    # the same rates on a sample that much larger are deployable
    k = (17 + point.needs["positives"]) / 17
    big_y = np.repeat(y, int(np.ceil(k)) + 1)
    big_p = np.repeat(p, int(np.ceil(k)) + 1) + rng.normal(0, 1e-4, len(big_y))
    assert choose(big_y, big_p, 0.95, "wilson").deployable
    assert "it would need about" in describe(point, "PNEUMONIA", "NORMAL")


def test_a_threshold_that_flags_every_normal_film_is_refused():
    """The adapt case of issue 25: sensitivity reached only by flagging nearly every normal film."""
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(200), np.zeros(100)].astype(bool)
    p = rng.random(300)  # no separation at all
    point = choose(y, p, 0.95, "wilson")
    assert not point.deployable and "specificity" in point.refused
    assert point.needs is None  # more films will not help a model that does not separate
    assert "would not help" in describe(point)


def test_unknown_rule_and_no_positives_are_errors():
    with pytest.raises(ValueError, match="unknown operating-point rule"):
        choose(np.array([1, 0]), np.array([0.9, 0.1]), 0.9, "youden")
    with pytest.raises(ValueError, match="no positive"):
        choose(np.array([0, 0]), np.array([0.9, 0.1]), 0.9)


def test_the_wilson_rules_sensitivity_holds_on_new_patients_where_the_point_rules_does_not():
    """Binormal scores (AUC about 0.95), 175 positives a sample as site_sample has: the true
    sensitivity at the chosen threshold reaches the target in most samples by the Wilson rule,
    about half of them by the point rule."""
    rng = np.random.default_rng(4)
    normal = NormalDist()
    held = {"point": 0, "wilson": 0}
    runs = 400
    for _ in range(runs):
        y = np.r_[np.ones(175), np.zeros(117)].astype(bool)
        z = np.where(y, rng.normal(2.3, 1, 292), rng.normal(0, 1, 292))
        for rule in held:
            t = choose(y, z, 0.95, rule, min_specificity=0.0, estimate_needs=False).threshold
            held[rule] += 1 - normal.cdf(t - 2.3) >= 0.95
    assert held["wilson"] / runs >= 0.95
    assert held["point"] / runs <= 0.7


def test_needs_in_words_say_when_it_is_more_than_a_site_can_label():
    few = needs_words({"positives": 13, "negatives": 0}, 292, "PNEUMONIA", "NORMAL")
    assert (
        few == "it would need about 13 more PNEUMONIA and 0 more NORMAL labelled films, if today's rates hold"
    )
    many = needs_words({"positives": 122_652, "negatives": 0}, 100, "PNEUMONIA", "NORMAL")
    assert "122,652 more PNEUMONIA" in many and "more than a site can label" in many
    assert "would not help" in needs_words(None, 100, "PNEUMONIA", "NORMAL")


def test_a_rule_that_reaches_no_threshold_shows_the_point_rules_and_says_so():
    y = np.array([1, 1, 1, 0, 0], dtype=bool)
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    point = choose(y, p, 0.95, "wilson")  # 3 positives: the lower bound is at most 0.44
    assert not point.reached and not point.deployable and point.threshold == pytest.approx(0.45)
    assert "since no threshold meets the lower-bound rule here" in describe(point)
    assert choose(y, p, 0.95, "point").reached
