"""Metric code on known answers."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import Confusion, roc_auc, summarize, threshold_for_sensitivity, youden_threshold
from training.split import PatientSplitter, patient_id


def test_rates_on_a_known_confusion_matrix():
    # 90 positives: 81 found; 60 negatives: 48 cleared
    rates = Confusion(tp=81, fp=12, tn=48, fn=9).rates()
    assert rates["sensitivity"] == pytest.approx(0.9)
    assert rates["specificity"] == pytest.approx(0.8)
    assert rates["precision"] == pytest.approx(81 / 93)
    assert rates["accuracy"] == pytest.approx(129 / 150)
    assert rates["balanced_accuracy"] == pytest.approx(0.85)
    assert rates["npv"] == pytest.approx(48 / 57)
    assert rates["f1"] == pytest.approx(2 * 81 / (2 * 81 + 12 + 9))


def test_confusion_at_threshold_and_matrix_layout():
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.4, 0.6, 0.1, 0.5])
    c = Confusion.at(y, p, 0.5)
    assert c == Confusion(tp=2, fp=1, tn=1, fn=1)
    assert c.matrix() == [[1, 1], [1, 2]]


def test_roc_auc_known_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    assert roc_auc([0, 0, 1], [0.1, 0.2, 0.9]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = rng.random(500)
    pairs = [(a > b) + 0.5 * (a == b) for a in p[y == 1] for b in p[y == 0]]
    assert roc_auc(y, p) == pytest.approx(np.mean(pairs))


def test_threshold_reaches_target_sensitivity_with_best_specificity():
    y = np.array([1] * 10 + [0] * 10)
    p = np.r_[np.linspace(0.95, 0.5, 10), np.linspace(0.6, 0.0, 10)]
    t = threshold_for_sensitivity(y, p, 0.9)
    s = summarize(y, p, t)
    assert s["sensitivity"] >= 0.9
    assert summarize(y, p, p[p > t].min() + 1e-9)["sensitivity"] < 0.9  # the next score up loses it
    assert np.abs(p - t).min() > 1e-6  # between two films' scores, on none
    assert 0 < youden_threshold(y, p) <= 1


def test_patient_ids_and_split_keep_patients_together():
    assert patient_id("person1000_bacteria_2931.jpeg") == patient_id("person1000_virus_1681.jpeg")
    assert patient_id("IM-0115-0001.jpeg") == patient_id("NORMAL2-IM-0115-0001.jpeg") == "im-0115"
    assert patient_id("scan.png") == "file:scan.png"
    items = [f"person{i % 37}_bacteria_{i}.jpeg" for i in range(300)]
    train, valid = PatientSplitter(0.2, seed=1)(items)
    assert sorted(train + valid) == list(range(300))
    assert not {patient_id(items[i]) for i in train} & {patient_id(items[i]) for i in valid}
    assert 0.1 < len(valid) / 300 < 0.3
