"""The site check's statistics on tiny examples worked out by hand (no model, no data)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from training.metrics import roc_auc
from training.site_check import (
    MIN_AUC,
    bootstrap,
    cluster_resamples,
    expected_calibration_error,
    gate_refusals,
    patient_groups,
    percentile_interval,
    reliability_bins,
    site_statistics,
    verdict,
    wilson_interval,
    write_json,
)


def test_four_film_example_auc_and_operating_points():
    # positives 0.35 and 0.8, negatives 0.1 and 0.4: of the 4 pairs, (0.35, 0.4) is misordered
    y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    stats = site_statistics(
        y, p, ["a", "b", "c", "d"], stored_threshold=0.5, target_sensitivity=0.5, rule="point"
    )
    assert stats["auc"] == pytest.approx(3 / 4)
    assert (stats["n"], stats["positives"], stats["negatives"], stats["patients"]) == (4, 2, 2, 4)
    stored = stats["at_stored_threshold"]  # only 0.8 >= 0.5
    assert stored["sensitivity"]["count"] == "1/2" and stored["specificity"]["count"] == "2/2"
    site = stats["at_target_sensitivity"]  # one positive of two: above 0.4, up to 0.8: their midpoint
    assert site["threshold"] == pytest.approx(0.6) and site["rule"] == "point"
    assert site["sensitivity"]["value"] == 0.5 and site["specificity"]["value"] == 1.0
    # a resample of 4 films has a single class with chance 2 / 2**4 = 1/8: those are skipped
    assert 0.09 < stats["bootstrap"]["skipped"] / stats["bootstrap"]["resamples"] < 0.16
    lo, hi = stats["auc_ci"]
    assert 0 <= lo <= 0.75 <= hi <= 1
    # the default rule wants the sensitivity's lower bound at 0.5: two positives cannot give that
    wilson = site_statistics(y, p, ["a", "b", "c", "d"], stored_threshold=0.5, target_sensitivity=0.5)
    at = wilson["at_target_sensitivity"]
    assert at["rule"] == "wilson" and not at["deployable"] and "2 positive films" in at["refused"]
    assert at["other_rule"]["threshold"] == pytest.approx(0.6)


def test_wilson_interval_for_8_of_10_is_the_textbook_one():
    z, n, p = 1.959963984540054, 10, 0.8
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the published figures


def test_wilson_interval_at_the_edges():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(1.959964**2 / (10 + 1.959964**2), abs=1e-6)
    assert wilson_interval(10, 10)[1] == 1
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert wilson_interval(8, 10, level=0.95) == wilson_interval(8, 10)
    assert wilson_interval(8, 10, level=0.99)[0] < wilson_interval(8, 10)[0]


def test_expected_calibration_error_of_a_constructed_example():
    p = np.array([0.05, 0.05, 0.15, 0.95, 0.95, 0.95, 0.95])
    y = np.array([0, 0, 1, 1, 1, 1, 0])
    # bin [0, .1): 2 films, mean p .05, observed 0 -> .05; bin [.1, .2): 1 film, .15 vs 1 -> .85;
    # bin [.9, 1]: 4 films, .95 vs .75 -> .2.  ECE = (2 * .05 + .85 + 4 * .2) / 7 = .25
    assert expected_calibration_error(y, p) == pytest.approx(0.25)
    bins = reliability_bins(y, p)
    assert [b["n"] for b in bins] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 4]
    assert bins[9]["observed"] == pytest.approx(0.75) and bins[5]["mean_p"] is None
    # one positive in four films at p = .25: perfectly calibrated
    assert expected_calibration_error([1, 0, 0, 0], [0.25] * 4) == pytest.approx(0.0)


def test_reliability_bins_edges():
    bins = reliability_bins(np.array([0, 1, 1, 0]), np.array([0.0, 0.1, 1.0, 0.999]))
    assert bins[0]["n"] == 1 and bins[1]["n"] == 1  # 0.1 opens the second bin
    assert bins[9]["n"] == 2  # p = 1 is in the last bin
    assert (bins[0]["lo"], bins[9]["hi"]) == (0.0, 1.0)


def test_cluster_resamples_keep_each_patients_films_together():
    groups = np.array(["p1", "p2", "p2", "p3", "p3", "p3", "p4"])
    sizes = {"p1": 1, "p2": 2, "p3": 3, "p4": 1}
    for idx in cluster_resamples(groups, resamples=200, seed=1):
        drawn = groups[idx]
        for g, size in sizes.items():
            assert (drawn == g).sum() % size == 0  # all of a patient's films, as often as drawn
        assert sum((drawn == g).sum() // size for g, size in sizes.items()) == 4  # 4 patients drawn


def test_duplicated_patients_give_the_interval_of_the_unique_ones():
    rng = np.random.default_rng(3)
    k = 60
    y = np.r_[np.ones(k // 2, int), np.zeros(k // 2, int)]
    p = np.clip(0.3 * y + rng.random(k) * 0.7, 0, 1)
    y2, p2, patients = np.repeat(y, 2), np.repeat(p, 2), np.repeat(np.arange(k), 2)

    def auc_of(yy, pp):
        return lambda idx: roc_auc(yy[idx], pp[idx])

    unique = bootstrap(auc_of(y, p), np.arange(k), resamples=500, seed=7)
    clustered = bootstrap(auc_of(y2, p2), patients, resamples=500, seed=7)
    np.testing.assert_allclose(clustered, unique)  # every film twice changes nothing
    naive = bootstrap(auc_of(y2, p2), np.arange(2 * k), resamples=500, seed=7)
    width = lambda b: np.subtract(*percentile_interval(b)[::-1])  # noqa: E731
    assert width(naive) < 0.85 * width(clustered)  # resampling films pretends twice the data
    again = bootstrap(auc_of(y2, p2), patients, resamples=500, seed=7)
    np.testing.assert_array_equal(again, clustered)  # the seed fixes it


def test_percentile_interval_ignores_undefined_resamples():
    values = np.r_[np.arange(101, dtype=float), [np.nan] * 50]
    assert percentile_interval(values) == pytest.approx((2.5, 97.5))
    assert all(math.isnan(v) for v in percentile_interval(np.array([np.nan])))


def test_perfect_separation_is_fit():
    y = np.r_[np.ones(30, int), np.zeros(30, int)]
    p = np.r_[np.linspace(0.6, 1.0, 30), np.linspace(0.0, 0.4, 30)]
    stats = site_statistics(y, p, np.arange(60), stored_threshold=0.5, target_sensitivity=0.9)
    assert stats["auc"] == 1.0 and stats["auc_ci"] == [1.0, 1.0]
    fit, line = verdict(stats)
    assert fit and line.startswith(
        f"fit for this site at threshold {stats['at_target_sensitivity']['threshold']:.4f}"
    )
    assert "sensitivity 0.900 [" in line and "specificity 1.000 [" in line
    oob = stats["at_target_sensitivity"]["on_left_out_patients"]
    assert oob["specificity"]["median"] == 1.0


def test_the_verdict_rule_is_the_auc_intervals_lower_bound():
    stats = {
        "auc_ci": [MIN_AUC - 0.01, 0.97],
        "at_target_sensitivity": {
            "threshold": 0.5,
            "sensitivity": {"value": 0.95, "ci": [0.9, 0.98]},
            "specificity": {"value": 0.8, "ci": [0.7, 0.85]},
        },
    }
    assert verdict(stats) == (False, "not fit: AUC interval [0.890-0.970] is below 0.90")
    stats["auc_ci"] = [MIN_AUC, 0.97]
    assert verdict(stats) == (
        True,
        "fit for this site at threshold 0.5000 "
        "(sensitivity 0.950 [0.900-0.980], specificity 0.800 [0.700-0.850])",
    )
    stats["auc_ci"] = [float("nan"), float("nan")]
    assert verdict(stats)[0] is False


def test_one_class_only_is_refused():
    with pytest.raises(ValueError, match="both classes"):
        site_statistics(
            np.ones(5), np.linspace(0, 1, 5), np.arange(5), stored_threshold=0.5, target_sensitivity=0.9
        )


def test_patient_groups_from_csv_names_or_files():
    kermany = [
        Path("person12_bacteria_1.jpeg"),
        Path("person12_virus_9.jpeg"),
        Path("NORMAL2-IM-0115-0001.jpeg"),
    ]
    groups, source = patient_groups(kermany, [None, None, None])
    assert source == "file names" and groups == ["person12", "person12", "im-0115"]
    groups, source = patient_groups([Path("a.png"), Path("b.png"), Path("c.png")], ["7", "7", None])
    assert source == "labels.csv patient_id" and groups[0] == groups[1] != groups[2]
    groups, source = patient_groups([Path("a.png"), Path("b.png")], [None, None])
    assert source == "files" and len(set(groups)) == 2


def test_a_model_without_an_image_gate_counts_no_refusals_and_nan_is_written_as_null(tmp_path: Path):
    class Ungated:
        metadata: dict = {}  # noqa: RUF012

    assert gate_refusals(Ungated(), []) is None
    write_json(tmp_path / "r.json", {"auc": float("nan"), "ci": (float("nan"), 0.5), "n": 3})
    assert json.loads((tmp_path / "r.json").read_text()) == {"auc": None, "ci": [None, 0.5], "n": 3}
