"""The model card follows the model file's metadata: gate, site profile and calibration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from training.card import refresh_model_card

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "pneumonia-resnet18"

PROFILE = {
    "name": "site-a",
    "threshold": 0.41,
    "target_sensitivity": 0.95,
    "sensitivity": 0.954,
    "specificity": 0.81,
    "auc": 0.96,
    "auc_ci": [0.93, 0.98],
    "n": 292,
    "patients": 205,
    "checked_on": "2026-12-02",
    "sample": "site/",
    "calibration": "platt",
    "ece_cross_fitted": 0.049,
}
GATE = {"kind": "mahalanobis", "layers": [{"layer": "0.4:grid3"}], "limit": 1.5, "fitted_on": "train/ (4180)"}
CALIBRATION = {"method": "platt", "scale": 0.9, "bias": -4.0, "fitted_on": "site-a: 292 films"}


def model_folder(tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(SHIPPED / "metrics.json", folder / "metrics.json")
    return folder, json.loads((folder / "metrics.json").read_text())["model"]["sha256"]


def test_the_card_shows_the_operating_point_gate_and_calibration_of_the_file(tmp_path: Path):
    folder, sha = model_folder(tmp_path)
    metadata = {"threshold": 0.41, "site_profile": PROFILE, "gate": GATE, "calibration": CALIBRATION}
    assert refresh_model_card(folder, metadata, "f" * 64, sha, valid_refused=0.015)
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Operating point: **0.4100** on the platt-calibrated P(PNEUMONIA)" in card
    assert "the site profile `site-a`" in card
    assert "`0.4:grid3`, limit 1.500" in card and "refuses 1.5% of the validation films" in card
    assert "sigmoid(0.9000 z -4.0000)" in card and "error 0.049 on held-out patients" in card
    assert f"SHA-256 `{'f' * 64}`" in card
    facts = json.loads((folder / "metrics.json").read_text())
    assert facts["model"]["sha256"] == "f" * 64 and facts["model"]["site_profile"] == PROFILE

    # a later change without calibration drops its section: the card never describes a stale file
    assert refresh_model_card(folder, {"threshold": 0.9, "gate": GATE}, "e" * 64, "f" * 64)
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Calibration" not in card and "Stored decision threshold: **0.9000**" in card
    assert "refuses 1.5% of the validation films" in card  # the gate's figure is kept


def test_a_folder_of_another_model_is_left_alone(tmp_path: Path):
    folder, _ = model_folder(tmp_path)
    before = (folder / "metrics.json").read_text()
    assert not refresh_model_card(folder, {"threshold": 0.5}, "f" * 64, "0" * 64)
    assert (folder / "metrics.json").read_text() == before and not (folder / "MODEL_CARD.md").exists()
    assert not refresh_model_card(tmp_path, {"threshold": 0.5}, "f" * 64, "0" * 64)  # no metrics.json
