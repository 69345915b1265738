"""The site baseline (drift's ``site-profile`` reference) is what the worker says of the site's
films: ``xray-train site-check --store`` writes it beside the model, and ``xray-worker predict``
on the same films agrees with it, verdict by verdict and percentile by percentile."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from training.cli import cli as train_cli
from worker.cli import cli as worker_cli
from worker.config import SHIPPED_BUNDLE_SHA256
from worker.drift.sample import BASELINE_FILE, Sample, load_baseline, size_class
from worker.drift.stats import PERCENTILES
from worker.errors import ConfigError
from worker.model.learner import file_sha256

pytestmark = pytest.mark.slow
MODELS = Path(__file__).resolve().parents[2] / "models" / "pneumonia-resnet18"
SHIPPED_SHA256 = "dd1b89a27da09b7811fbf9245a598666471395dc9364d0ad1f89550a8e266b91"


def predict(model: Path, sha256: str, folder: Path) -> list[dict]:
    run = CliRunner().invoke(
        worker_cli, ["predict", "--json", "--model", str(model), "--sha256", sha256, str(folder)]
    )
    assert run.exit_code == 0, run.output
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def assert_agrees(baseline: dict, answers: list[dict]) -> None:
    """The baseline holds the worker's own verdicts on those films."""
    screened = [a for a in answers if a["outcome"] == "screened"]
    outcomes = Counter(a["outcome"] for a in answers)
    assert baseline["results"] == outcomes["screened"] and baseline["refused"] == outcomes["out_of_scope"]
    assert baseline["positives"] == sum(a["label"] == a["positive_class"] for a in screened)
    p = np.array([a["positive_probability"] for a in screened])
    assert np.abs(np.quantile(p, PERCENTILES) - baseline["p_percentiles"]).max() < 1e-5
    assert baseline["p_mean"] == pytest.approx(p.mean(), abs=1e-6)
    assert baseline["formats"] == dict(Counter(a["format"] for a in screened))
    assert baseline["sizes"] == dict(Counter(size_class(a["width"], a["height"]) for a in screened))


def test_the_shipped_baseline_is_what_the_shipped_model_says(data_dir: Path):
    """``site-check`` made the baseline with the learner (torch): the same runtime answers here."""
    baseline = load_baseline(MODELS / "export.pkl", SHIPPED_SHA256)
    assert (baseline["site"], baseline["films"], baseline["model_sha256"]) == (
        "kermany-test",
        292,
        SHIPPED_SHA256,
    )
    assert_agrees(baseline, predict(MODELS / "export.pkl", SHIPPED_SHA256, data_dir / "site_sample"))
    sample = Sample.of_baseline(baseline)
    # an enriched sample (175 of 292 films are pneumonia), at an operating point chosen for sensitivity
    assert 0.6 < sample.positive_rate < 0.75 and sample.refusal_rate < 0.02


def test_no_film_of_site_sample_is_within_1e6_of_the_threshold_on_either_runtime(data_dir: Path):
    """The threshold lies between two films' scores, so a rounding change in P (torch against
    ONNX, or a 1e-9 change in every P) moves no label of the sample it was chosen on; and both
    runtimes label every film alike."""
    learner = predict(MODELS / "export.pkl", SHIPPED_SHA256, data_dir / "site_sample")
    bundle = predict(MODELS / "onnx", SHIPPED_BUNDLE_SHA256, data_dir / "site_sample")
    threshold = json.loads((MODELS / "onnx" / "bundle.json").read_text())["metadata"]["threshold"]
    assert load_baseline(MODELS / "export.pkl", SHIPPED_SHA256)["threshold"] == threshold
    labels = {}
    for name, answers in (("torch", learner), ("onnx", bundle)):
        screened = [a for a in answers if a["outcome"] == "screened"]
        assert len(screened) == 289, name
        p = np.array([a["positive_probability"] for a in screened])
        assert np.abs(p - threshold).min() > 1e-6, name
        assert (
            ((p + 1e-9) >= threshold).tolist()
            == ((p - 1e-9) >= threshold).tolist()
            == (p >= threshold).tolist()
        )
        assert [a["label"] == a["positive_class"] for a in screened] == (p >= threshold).tolist()
        labels[name] = {a["path"]: a["label"] for a in screened}
    assert labels["torch"] == labels["onnx"]


def test_site_check_store_writes_the_baseline_beside_the_model(data_dir: Path, tmp_path: Path):
    site = tmp_path / "site"
    shutil.copytree(data_dir / "site_sample", site)
    for f in sorted((data_dir / "dicom").glob("00*.dcm"))[:3]:  # adult DICOMs: the gate refuses some
        shutil.copy(f, site / "NORMAL" / f.name)
    model = tmp_path / "model" / "export.pkl"
    model.parent.mkdir()
    shutil.copy(MODELS / "export.pkl", model)
    out = tmp_path / "check"
    run = CliRunner().invoke(
        train_cli, ["site-check", str(model), str(site), "--out", str(out), "--store", "--resamples", "100"]
    )
    assert run.exit_code == 0, run.output
    sha = file_sha256(model)
    assert sha != SHIPPED_SHA256 and f"wrote {model.parent / BASELINE_FILE}" in run.output
    stored = load_baseline(model, sha)
    assert stored["model_sha256"] == sha and stored["films"] == 295 and stored["failed"] == 0
    assert stored["threshold"] == pytest.approx(
        json.loads((out / "site_check.json").read_text())["calibration"]["fitted"]["threshold"]
    )
    answers = predict(model, sha, site)
    assert_agrees(stored, answers)
    assert {a["format"] for a in answers if a["outcome"] == "screened"} <= {"JPEG", "DICOM"}
    # the check's own baseline is of the model as it was, before --store
    before = json.loads((out / BASELINE_FILE).read_text())
    assert before["model_sha256"] == SHIPPED_SHA256 and before["results"] == stored["results"]
    with pytest.raises(ConfigError, match="describes model"):
        load_baseline(model, SHIPPED_SHA256)


def test_a_bundle_finds_the_baseline_of_the_learner_it_was_exported_from(tmp_path: Path):
    model = tmp_path / "model"
    (model / "onnx").mkdir(parents=True)
    shutil.copy(MODELS / BASELINE_FILE, model / BASELINE_FILE)
    manifest = {"source": {"file": "export.pkl", "sha256": SHIPPED_SHA256}}
    (model / "onnx" / "bundle.json").write_text(json.dumps(manifest))
    assert load_baseline(model / "onnx", "ab" * 32)["model_sha256"] == SHIPPED_SHA256
    assert load_baseline(model / "onnx" / "bundle.json", "ab" * 32)["site"] == "kermany-test"
    (model / "onnx" / "bundle.json").write_text(json.dumps({"source": {"sha256": "cd" * 32}}))
    with pytest.raises(ConfigError, match="describes model dd1b89a27da0"):
        load_baseline(model / "onnx", "ab" * 32)
    with pytest.raises(ConfigError, match="no site baseline at"):
        load_baseline(tmp_path / "elsewhere" / "export.pkl", "ab" * 32)
