"""xray-train on a few real images: the files it writes, and that the worker agrees with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torchvision.models import resnet18

from training.cli import cli as train_cli
from training.data import class_root, labelled_files
from worker.cli.main import cli as worker_cli
from worker.config import InferenceSettings
from worker.model.learner import file_sha256, load_model
from worker.model.predictor import Predictor

TINY = ["--size", "64", "--epochs", "1", "--batch-size", "16"]


@pytest.fixture(scope="module")
def fitted(small_train_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fit")
    result = CliRunner().invoke(train_cli, ["fit", str(small_train_dir), "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert "training from scratch" in result.output
    assert "epoch 1/1  train_loss" in result.output  # plain lines when not a terminal
    return out


def test_fit_writes_model_metrics_plots_and_card(fitted: Path):
    for name in [
        "export.pkl",
        "metrics.json",
        "MODEL_CARD.md",
        "confusion_matrix.png",
        "top_losses.png",
        "show_batch.png",
        "loss_curve.png",
        "validation/roc_curve.png",
        "validation/metrics.json",
    ]:
        assert (fitted / name).stat().st_size > 0, name
    facts = json.loads((fitted / "metrics.json").read_text())
    assert facts["model"]["sha256"] == file_sha256(fitted / "export.pkl")
    assert facts["data"]["train"] + facts["data"]["valid"] == 80
    assert facts["recipe"]["split"] == "patient"
    v = facts["validation"]
    for key in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"):
        assert 0 <= v[key] <= 1, key
    assert v["sensitivity"] >= 0.95  # the stored threshold reaches the target on validation
    assert len(facts["history"]) == 1 and "torch" in facts["versions"]
    card = (fitted / "MODEL_CARD.md").read_text()
    assert "not a diagnosis" in card and facts["model"]["sha256"] in card


def test_export_screens_in_the_worker_like_fastai(fitted: Path, full_res_dir: Path):
    files = sorted((full_res_dir / "val").rglob("*.jpeg"))
    digest = file_sha256(fitted / "export.pkl")
    result = CliRunner().invoke(
        worker_cli,
        ["predict", "--json", "--sha256", digest, "--model", str(fitted / "export.pkl"), *map(str, files)],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    model = load_model(fitted / "export.pkl", sha256=digest)
    expected, _ = model.learner.get_preds(dl=model.learner.dls.test_dl(files))
    worker = np.array([[r["probabilities"][c] for c in model.vocab] for r in records])
    assert np.abs(worker - expected.numpy()).max() < 1e-4
    threshold = model.metadata["threshold"]
    for r in records:  # labels follow the stored threshold, probabilities are stored as they are
        assert (r["label"] == "PNEUMONIA") == (r["positive_probability"] >= threshold)


def test_evaluate_picks_and_stores_a_threshold(fitted: Path, full_res_dir: Path, tmp_path: Path):
    model_path = tmp_path / "export.pkl"
    model_path.write_bytes((fitted / "export.pkl").read_bytes())
    before = file_sha256(model_path)
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        train_cli,
        [
            "evaluate",
            str(model_path),
            str(full_res_dir / "val"),
            "--out",
            str(out),
            "--target-sensitivity",
            "0.75",
            "--store",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 16 and metrics["positives"] == 8
    assert metrics["sensitivity"] >= 0.75
    assert (out / "roc_curve.png").exists() and (out / "top_losses.png").exists()
    after = file_sha256(model_path)
    assert after != before and after in result.output
    stored = load_model(model_path, sha256=after).metadata["threshold"]
    assert stored == pytest.approx(metrics["threshold"])


def test_evaluate_with_a_labels_csv_recorded_in_the_card(fitted: Path, dicom_dir: Path, tmp_path: Path):
    model_dir = tmp_path / "model"
    shutil.copytree(fitted, model_dir)
    args = ["evaluate", str(model_dir / "export.pkl"), str(dicom_dir), "--out", str(tmp_path / "eval")]
    args += ["--labels", str(dicom_dir / "labels.csv"), "--record-in", str(model_dir)]
    args += ["--name", "RSNA adults"]
    result = CliRunner().invoke(train_cli, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 16 and metrics["positives"] == 5
    recorded = json.loads((model_dir / "metrics.json").read_text())["evaluations"]["RSNA adults"]
    assert recorded["n"] == 16 and recorded["roc_auc"] == metrics["roc_auc"]
    assert "| RSNA adults | 16 |" in (model_dir / "MODEL_CARD.md").read_text()


def test_kaggle_layout_is_recognised(tmp_path: Path):
    for split in ("train", "val", "test"):
        (tmp_path / split / "NORMAL").mkdir(parents=True)
    (tmp_path / "test" / "NORMAL" / "a.png").write_bytes(b"x")
    assert class_root(tmp_path, "train") == tmp_path / "train"
    assert labelled_files(tmp_path, "test") == [(tmp_path / "test" / "NORMAL" / "a.png", "NORMAL")]
    assert class_root(tmp_path / "train", "test") == tmp_path / "train"  # plain layout as it is


def test_fit_from_a_local_weights_file(small_train_dir: Path, tmp_path: Path):
    weights = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), weights)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        train_cli, ["fit", str(small_train_dir), "--out", str(out), "--weights", str(weights), *TINY]
    )
    assert result.exit_code == 0, result.output
    assert "training from scratch" not in result.output
    model = load_model(out / "export.pkl", trust=True)
    outcomes = list(
        Predictor(model, InferenceSettings(batch_size=4)).predict(sorted(small_train_dir.rglob("*.jpeg"))[:6])
    )
    assert len(outcomes) == 6
    assert all(abs(sum(o.probabilities.values()) - 1) < 1e-5 for o in outcomes)
