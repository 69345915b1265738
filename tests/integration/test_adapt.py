"""`xray-train adapt`: fine-tuning the shipped pediatric model on adult films of a site."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from training.cli import cli as train_cli
from worker.model.calibration import Calibration
from worker.model.gate import ImageGate
from worker.model.learner import file_sha256, load_model

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "pneumonia-resnet18" / "export.pkl"


@pytest.fixture
def small_site(data_dir: Path, tmp_path: Path) -> Path:
    """Half of the NIH site sample's patients (about 240 films), with their labels.csv rows."""
    src = data_dir / "nih_site_sample"
    if not (src / "labels.csv").is_file():
        pytest.fail(f"real test data missing: {src} (see ../shared/data/README.md)")
    with (src / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    patients = sorted({r["patient_id"] for r in rows})
    keep = set(random.Random(1).sample(patients, len(patients) // 2))
    site = tmp_path / "site"
    chosen = [r for r in rows if r["patient_id"] in keep]
    for r in chosen:
        (site / r["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / r["file"], site / r["file"])
    with (site / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return site


def test_adapt_raises_the_auc_on_held_back_patients_and_writes_a_new_model(small_site: Path, tmp_path: Path):
    before_sha = file_sha256(SHIPPED)
    out = tmp_path / "adapted"
    args = ["adapt", str(SHIPPED), str(small_site), "--out", str(out), "--epochs", "8", "--name", "adults"]
    result = CliRunner().invoke(train_cli, args)
    assert result.exit_code == 0, result.output
    assert file_sha256(SHIPPED) == before_sha  # the source is never changed

    facts = json.loads((out / "metrics.json").read_text())
    split = facts["split"]
    assert split["patients_from"] == "labels.csv patient_id"
    assert split["adapt"]["films"] + split["held_back"]["films"] == len(list(small_site.rglob("*.png")))
    before, after = facts["held_back_before"], facts["held_back_after"]
    assert before["n"] == after["n"] == split["held_back"]["films"]
    # the pediatric model ranks adults no better than chance; adapted, it ranks them well
    assert before["auc"] < 0.6 and after["auc"] >= before["auc"] + 0.2, (before["auc"], after["auc"])

    model = load_model(out / "export.pkl", sha256=facts["model"]["sha256"])
    meta = model.metadata
    assert meta["adapted_from"]["sha256"] == before_sha and meta["name"] == "pneumonia-resnet18-adults"
    assert meta["site_profile"]["name"] == "adults" and meta["threshold"] == meta["site_profile"]["threshold"]
    assert Calibration.of(model) is not None
    gate = ImageGate.of(model)
    assert gate is not None and "nih" not in gate.fitted_on and str(small_site) in gate.fitted_on
    assert 0 <= facts["gate"]["held_back_refused"] <= 0.05
    assert model.preprocessing == load_model(SHIPPED, trust=True).preprocessing  # the same pipeline
    card = (out / "MODEL_CARD.md").read_text()
    assert "not the shipped default" in card and f"{after['auc']:.3f}" in card
    assert f"AUC {before['auc']:.3f}" in result.output
    assert np.isfinite(facts["calibration"]["ece_cross_fitted"])
