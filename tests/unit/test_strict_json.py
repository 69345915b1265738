"""Figures as strict JSON (``worker/strict_json.py``): NaN and ±infinity are null, nested or not,
and every other value is kept; the drift report and the site check's files go through it."""

from __future__ import annotations

import json
import math

import pytest

from worker.strict_json import finite


@pytest.mark.parametrize("figure", [math.nan, math.inf, -math.inf])
def test_an_undefined_or_unbounded_figure_is_null_wherever_it_is(figure: float):
    value = {"auc": figure, "ci": (figure, 0.5), "rows": [{"lr": figure, "n": 3}], "name": "site"}
    text = json.dumps(finite(value), allow_nan=False)  # strict: raises on NaN or Infinity
    nulls = {"auc": None, "ci": [None, 0.5], "rows": [{"lr": None, "n": 3}], "name": "site"}
    assert json.loads(text) == nulls


def test_finite_figures_and_other_values_are_kept():
    value = {"p": 0.25, "n": 7, "big": 1e308, "ok": True, "none": None, "words": ["a", "b"]}
    assert finite(value) == value


def test_the_site_check_writes_strict_json(tmp_path):
    from training.site_check import write_json

    write_json(tmp_path / "r.json", {"auc": math.nan, "lr_plus": math.inf, "lr_minus": -math.inf, "n": 3})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"auc": None, "lr_plus": None, "lr_minus": None, "n": 3}
