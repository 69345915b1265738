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

from training.adapt import patient_folds
from training.cli import cli as train_cli
from worker.model.calibration import Calibration
from worker.model.gate import ImageGate
from worker.model.learner import file_sha256, load_model

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "pneumonia-resnet18" / "export.pkl"


@pytest.fixture(scope="module")
def small_site(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 films of the NIH site sample, whole patients drawn at random, with their labels.csv rows."""
    src = data_dir / "nih_site_sample"
    if not (src / "labels.csv").is_file():
        pytest.fail(f"real test data missing: {src} (see ../shared/data/README.md)")
    with (src / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    patients = sorted({r["patient_id"] for r in rows})
    random.Random(7).shuffle(patients)
    chosen: list[dict[str, str]] = []
    for pid in patients:
        theirs = [r for r in rows if r["patient_id"] == pid]
        if len(chosen) + len(theirs) <= 100:
            chosen += theirs
        if len(chosen) == 100:
            break
    site = tmp_path_factory.mktemp("site")
    for r in chosen:
        (site / r["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / r["file"], site / r["file"])
    with (site / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return site


def positives(site: Path) -> int:
    with (site / "labels.csv").open(newline="") as fh:
        return sum(r["label"] == "PNEUMONIA" for r in csv.DictReader(fh))


def test_too_few_positives_for_the_target_write_no_model_and_say_what_it_would_take(
    small_site: Path, tmp_path: Path
):
    """Fewer than 73 positives: even finding all of them, the lower 95% bound of sensitivity stays
    under 0.95, so the adapted model is not written however well it ranks."""
    out = tmp_path / "adapted"
    out.mkdir()
    (out / "export.pkl").write_bytes(b"an earlier run's model")  # must not survive a refusal
    args = ["adapt", str(SHIPPED), str(small_site), "--out", str(out), "--folds", "2", "--epochs", "2"]
    result = CliRunner().invoke(train_cli, args)
    assert result.exit_code == 1, result.output
    n_pos = positives(small_site)
    assert n_pos < 73
    assert f"with {n_pos} positive films the lower bound of sensitivity cannot reach 0.95" in result.output
    assert "NOT WRITTEN" in result.output and "no model written" in result.output
    assert not (out / "export.pkl").exists()
    facts = json.loads((out / "metrics.json").read_text())
    assert facts["deployable"] is False and facts["model"]["written"] is False
    point = facts["operating_point"]
    assert point["sensitivity_lower"] < 0.95 and point["positives"] == n_pos
    assert "NOT WRITTEN" in (out / "MODEL_CARD.md").read_text()
    # the folds: every film scored once, by a model that did not see its patient
    split = facts["split"]
    assert sum(f["films"] for f in split["folds"]) == split["films"] == 100


def test_adapt_cross_fits_every_film_and_writes_a_model_whose_operating_point_holds(
    small_site: Path, tmp_path: Path
):
    before_sha = file_sha256(SHIPPED)
    out = tmp_path / "adapted"
    args = ["adapt", str(SHIPPED), str(small_site), "--out", str(out), "--name", "adults"]
    args += ["--folds", "3", "--epochs", "6", "--target-sensitivity", "0.8", "--min-specificity", "0.3"]
    result = CliRunner().invoke(train_cli, args)
    assert result.exit_code == 0, result.output
    assert file_sha256(SHIPPED) == before_sha  # the source is never changed

    facts = json.loads((out / "metrics.json").read_text())
    assert facts["split"]["patients_from"] == "labels.csv patient_id"
    assert [f["films"] for f in facts["split"]["folds"]] and facts["split"]["films"] == 100
    before, after = facts["before"], facts["cross_fitted"]
    assert before["n"] == after["n"] == 100
    # the pediatric model ranks adults no better than chance; adapted, it ranks them well
    assert before["auc"] < 0.6 and after["auc"] >= before["auc"] + 0.2, (before["auc"], after["auc"])
    point = facts["operating_point"]
    assert facts["deployable"] and point["rule"] == "wilson"
    assert point["sensitivity_lower"] >= 0.8 and point["specificity_lower"] >= 0.3

    model = load_model(out / "export.pkl", sha256=facts["model"]["sha256"])
    meta = model.metadata
    assert meta["adapted_from"]["sha256"] == before_sha and meta["name"] == "pneumonia-resnet18-adults"
    profile = meta["site_profile"]
    assert profile["name"] == "adults" and meta["threshold"] == profile["threshold"] == point["threshold"]
    assert profile["rule"] == "wilson" and profile["sensitivity_lower"] == point["sensitivity_lower"]
    assert Calibration.of(model) is not None
    gate = ImageGate.of(model)
    assert gate is not None and "nih" not in gate.fitted_on and str(small_site) in gate.fitted_on
    assert gate.limit == pytest.approx(facts["gate"]["limit"])
    assert 0 <= facts["gate"]["cross_fitted_refused"] <= 0.1
    assert model.preprocessing == load_model(SHIPPED, trust=True).preprocessing  # the same pipeline
    card = (out / "MODEL_CARD.md").read_text()
    assert "not the shipped default" in card and f"{after['auc']:.3f}" in card and "Cross-fitting" in card
    assert f"AUC {before['auc']:.3f}" in result.output
    assert np.isfinite(facts["calibration"]["ece_cross_fitted"])


def test_patient_folds_keep_a_patients_films_together_and_balance_the_folds():
    groups = [f"p{i // 3}" for i in range(30)] + [f"q{i}" for i in range(7)]  # 10 patients x 3, 7 x 1
    folds = patient_folds(groups, 4, seed=1)
    for g in set(groups):
        assert len({int(folds[i]) for i, h in enumerate(groups) if h == g}) == 1
    per_fold = [len({g for g, f in zip(groups, folds, strict=True) if f == k}) for k in range(4)]
    assert sorted(per_fold) == [4, 4, 4, 5]  # 17 patients dealt out in turn
    with pytest.raises(ValueError, match="too few for 20 folds"):
        patient_folds(groups, 20, seed=1)
