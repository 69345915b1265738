"""`xray-train site-check` with the shipped model on the two real site samples."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from training.cli import cli as train_cli
from worker.model.learner import file_sha256, load_model

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "pneumonia-resnet18" / "export.pkl"


def sample(data_dir: Path, name: str) -> Path:
    path = data_dir / name
    if not path.is_dir():
        pytest.fail(f"real test data missing: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """The shipped model, copied: the tests never rewrite the shipped file."""
    path = tmp_path / "model" / "export.pkl"
    path.parent.mkdir()
    shutil.copy(SHIPPED, path)
    return path


def test_site_sample_is_fit_and_store_writes_the_site_profile(
    model_copy: Path, data_dir: Path, tmp_path: Path
):
    site = sample(data_dir, "site_sample")
    shipped_sha, before = file_sha256(SHIPPED), file_sha256(model_copy)
    out = tmp_path / "check"
    args = ["site-check", str(model_copy), str(site), "--out", str(out), "--store", "--name", "kermany-test"]
    result = CliRunner().invoke(train_cli, args)
    assert result.exit_code == 0, result.output

    report = json.loads((out / "site_check.json").read_text())
    assert (report["n"], report["positives"], report["negatives"], report["patients"]) == (292, 175, 117, 205)
    assert report["bootstrap"] == {
        "resamples": 2000,
        "seed": 0,
        "level": 0.95,
        "skipped": 0,
        "unit": "patient",
        "patients_from": "file names",
        "interval": "percentile",
    }
    assert report["model_sha256"] == before and report["site"] == "kermany-test"
    lo, hi = report["auc_ci"]
    assert 0.9 <= lo < report["auc"] < hi <= 1
    stored = report["at_stored_threshold"]
    assert stored["threshold"] == pytest.approx(load_model(SHIPPED, trust=True).metadata["threshold"])
    for point in (stored, report["at_target_sensitivity"]):
        for rate in ("sensitivity", "specificity"):
            r = point[rate]
            assert r["ci"][0] <= r["value"] <= r["ci"][1] and len(r["ci_bootstrap"]) == 2
    at = report["at_target_sensitivity"]
    assert at["target_sensitivity"] == 0.95 and at["sensitivity"]["value"] >= 0.95
    # the default rule: the lower bound of sensitivity reaches the target, at some specificity's cost
    assert at["rule"] == "wilson" and at["deployable"] and at["sensitivity_lower"] >= 0.95
    assert at["sensitivity"]["ci"][0] == pytest.approx(at["sensitivity_lower"])
    other = at["other_rule"]
    assert other["rule"] == "point" and other["threshold"] > at["threshold"]
    assert other["specificity"]["value"] >= at["specificity"]["value"]
    assert "by the point rule (sensitivity on the sample): threshold" in result.output
    assert at["threshold_ci"][0] <= at["threshold"] <= at["threshold_ci"][1]
    assert 0 <= report["calibration"]["ece"] <= 1 and len(report["calibration"]["bins"]) == 10
    gate = report["gate"]  # the shipped model's image gate: its own population mostly passes
    assert gate["status"] == "fitted" and gate["screened"] + gate["refusals"] == report["n"]
    assert gate["refusal_rate"] <= 0.02 and gate["auc_of_screened"] >= 0.9
    assert report["verdict"]["fit"] is True and report["failed"] == []
    assert (out / "reliability.png").stat().st_size > 0
    # the shipped model carries the calibration fitted on this sample: P is near the observed rates
    assert report["calibration"]["in_use"]["method"] == "platt" and report["calibration"]["ece"] < 0.07
    fitted = report["calibration"]["fitted"]  # fitted again here (platt by default)
    assert fitted["method"] == "platt" and fitted["scale"] > 0 and fitted["ece_cross_fitted"] < 0.1
    assert fitted["ece_in_sample"] <= fitted["ece_cross_fitted"] + 0.02
    assert set(fitted["ece_cross_fitted_by_method"]) == {"platt", "temperature"}
    assert (out / "reliability-calibrated.png").stat().st_size > 0
    assert "platt calibration fitted here" in result.output

    assert f"gate: refused {gate['refusals']} of {report['n']} films" in result.output
    assert re.search(
        r"^fit for this site at threshold 0\.\d{4} \(sensitivity 0\.\d{3} \[0\.\d{3}-[01]\.\d{3}\], "
        r"specificity 0\.\d{3} \[0\.\d{3}-[01]\.\d{3}\]\)$",
        result.output,
        re.MULTILINE,
    )
    assert report["verdict"]["line"] in result.output

    after = file_sha256(model_copy)
    assert after != before and f"new SHA-256 {after}" in result.output and "[model] sha256" in result.output
    metadata = load_model(model_copy, sha256=after).metadata
    profile = metadata["site_profile"]
    # the threshold is on the calibrated scale: it flags the films the raw threshold flagged
    assert metadata["threshold"] == profile["threshold"] == fitted["threshold"]
    assert metadata["calibration"] == {k: fitted[k] for k in ("method", "scale", "bias", "fitted_on")}
    assert profile == {
        "name": "kermany-test",
        "threshold": fitted["threshold"],
        "target_sensitivity": 0.95,
        "rule": "wilson",
        "sensitivity": at["sensitivity"]["value"],
        "sensitivity_lower": at["sensitivity_lower"],
        "specificity": at["specificity"]["value"],
        "specificity_lower": at["specificity_lower"],
        "auc": report["auc"],
        "auc_ci": report["auc_ci"],
        "n": 292,
        "patients": 205,
        "checked_on": report["checked_on"],
        "sample": str(site),
        "calibration": "platt",
        "ece_cross_fitted": fitted["ece_cross_fitted"],
    }
    assert metadata["name"] == "pneumonia-resnet18"  # the rest of the metadata is kept
    assert file_sha256(SHIPPED) == shipped_sha

    # checked again with its profile: it reports calibrated P, flags the same films as before
    again = tmp_path / "again"
    args = ["site-check", str(model_copy), str(site), "--out", str(again), "--calibrate", "none"]
    result = CliRunner().invoke(train_cli, args)
    assert result.exit_code == 0, result.output
    second = json.loads((again / "site_check.json").read_text())
    assert second["calibration"]["ece"] == pytest.approx(fitted["ece_in_sample"])
    assert second["calibration"]["in_use"]["scale"] == fitted["scale"]
    assert second["at_stored_threshold"]["confusion"] == at["confusion"]
    assert second["auc"] == pytest.approx(report["auc"])


def test_nih_sample_is_not_fit_and_store_refuses(model_copy: Path, data_dir: Path, tmp_path: Path):
    site = sample(data_dir, "nih_site_sample")
    before = file_sha256(model_copy)
    out = tmp_path / "check"
    result = CliRunner().invoke(
        train_cli, ["site-check", str(model_copy), str(site), "--out", str(out), "--store"]
    )
    assert result.exit_code == 1
    assert "not storing a site profile: the model is not fit for this site" in result.output
    assert file_sha256(model_copy) == before

    report = json.loads((out / "site_check.json").read_text())
    assert report["labels"] == str(site / "labels.csv")  # found in SITE_DIR
    assert (report["n"], report["positives"], report["patients"]) == (480, 241, 341)
    assert report["bootstrap"]["unit"] == "patient"
    assert report["bootstrap"]["patients_from"] == "labels.csv patient_id"
    assert report["auc_ci"][1] < 0.7 and report["verdict"]["fit"] is False
    lo, hi = report["auc_ci"]
    assert f"not fit: AUC interval [{lo:.3f}-{hi:.3f}] is below 0.90" in result.output


def test_store_refuses_an_operating_point_the_sample_cannot_vouch_for(
    model_copy: Path, data_dir: Path, tmp_path: Path
):
    """Fit (its AUC interval is above 0.90), but 175 positives cannot put the lower bound of
    sensitivity at 0.98 (that takes 188 positives, all found): nothing is stored, and the report
    says how many more films it needs."""
    site = sample(data_dir, "site_sample")
    before = file_sha256(model_copy)
    out = tmp_path / "check"
    args = [
        "site-check",
        str(model_copy),
        str(site),
        "--out",
        str(out),
        "--store",
        "--target-sensitivity",
        "0.98",
    ]
    result = CliRunner().invoke(train_cli, [*args, "--resamples", "200"])
    assert result.exit_code == 1, result.output
    assert file_sha256(model_copy) == before
    report = json.loads((out / "site_check.json").read_text())
    at = report["at_target_sensitivity"]
    assert report["verdict"]["fit"] is True and at["deployable"] is False
    assert "with 175 positive films the lower bound of sensitivity cannot reach 0.98" in at["refused"]
    # n/(n + 1.96**2) >= 0.98 takes n >= 188 even with every positive found
    assert at["needs"]["positives"] >= 188 - 175 and at["needs"]["negatives"] == 0
    assert re.search(
        r"NOT DEPLOYABLE: .*it would need about \d+ more PNEUMONIA and \d+ more NORMAL", result.output
    )
    assert "not storing a site profile: its operating point is not deployable" in result.output
