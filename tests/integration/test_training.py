"""xray-train on a few real images: the files it writes, and that the worker agrees with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fastai.callback.mixup import MixUp
from fastai.learner import load_learner
from fastai.losses import LabelSmoothingCrossEntropyFlat
from fastai.torch_core import TensorImage
from torchvision.models import resnet18

from training.cli import cli as train_cli
from training.data import class_root, labelled_files
from worker.cli.main import cli as worker_cli
from worker.config import InferenceSettings
from worker.model.learner import MovedModules, file_sha256, load_model
from worker.model.predictor import Predictor
from worker.model.stages import prepare_file

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


class _RefuseTrainingModules:
    """A ``pickle_module`` for ``load_learner`` that fails on any class from ``training``."""

    class Unpickler(MovedModules.Unpickler):
        def find_class(self, module: str, name: str):
            assert module.split(".")[0] != "training", f"export names {module}.{name}"
            return super().find_class(module, name)

    @classmethod
    def load(cls, file, **kwargs):
        return cls.Unpickler(file, **kwargs).load()


def test_default_recipe_is_the_shipped_one(fitted: Path):
    recipe = json.loads((fitted / "metrics.json").read_text())["recipe"]
    assert (recipe["augment"], recipe["augment_level"]) == (True, "mild")
    assert recipe["label_smoothing"] == 0 and recipe["mixup"] == 0
    assert "Loss: cross-entropy with class weights." in (fitted / "MODEL_CARD.md").read_text()


@pytest.mark.filterwarnings("ignore:load_learner. uses Python's insecure pickle:UserWarning")
def test_strong_augmentation_label_smoothing_and_mixup(small_train_dir: Path, fitted: Path, tmp_path: Path):
    out = tmp_path / "run"
    options = ["--augment-level", "strong", "--label-smoothing", "0.1", "--mixup", "0.4"]
    result = CliRunner().invoke(train_cli, ["fit", str(small_train_dir), "--out", str(out), *options, *TINY])
    assert result.exit_code == 0, result.output
    facts = json.loads((out / "metrics.json").read_text())
    assert facts["recipe"]["augment_level"] == "strong"
    assert facts["recipe"]["label_smoothing"] == 0.1 and facts["recipe"]["mixup"] == 0.4
    card = (out / "MODEL_CARD.md").read_text()
    assert "strong: rotation up to 15 degrees" in card and "label smoothing 0.1, MixUp (alpha 0.4)" in card

    # The worker never imports training: the export names none of its classes, and loads as usual.
    learner = load_learner(out / "export.pkl", cpu=True, pickle_module=_RefuseTrainingModules)
    assert not any(isinstance(cb, MixUp) for cb in learner.cbs)  # MixUp only while fitting
    assert isinstance(learner.loss_func, LabelSmoothingCrossEntropyFlat)
    model = load_model(out / "export.pkl", trust=True)
    shipped = load_model(fitted / "export.pkl", trust=True)

    # Inference preprocessing is the default recipe's: same decode and resize, and at inference
    # the batch transforms only scale to [0, 1] and normalise (the augmentations are skipped).
    assert model.preprocessing.version.split(";")[:4] == shipped.preprocessing.version.split(";")[:4]
    films = sorted(small_train_dir.rglob("*.jpeg"))[:4]
    items = torch.stack([prepare_file(model, p)[0] for p in films])
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in model.preprocessing.normalize)
    for _ in range(3):  # random transforms would differ from call to call
        assert torch.allclose(model.batch_pipeline(items), (items.float() / 255 - mean) / std, atol=1e-4)


def test_xray_intensity_runs_on_the_training_split_only():
    from training.data import XrayIntensity, xray_augmentations

    x = TensorImage(torch.rand(8, 1, 32, 32))
    tfm = XrayIntensity(p_blur=1.0, p_noise=1.0)
    y = tfm(x, split_idx=0)
    assert isinstance(y, TensorImage) and y.shape == x.shape
    assert float(y.min()) >= 0 and float(y.max()) <= 1 and not torch.allclose(x, y)
    assert tfm(x, split_idx=1) is x
    assert any(isinstance(t, XrayIntensity) for t in xray_augmentations("strong"))
    assert not any(isinstance(t, XrayIntensity) for t in xray_augmentations("mild"))
    with pytest.raises(ValueError, match="unknown augmentation level"):
        xray_augmentations("wild")
