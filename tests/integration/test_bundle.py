"""Model bundles: the ONNX network and numpy preprocessing give fastai's answers, the gate
refuses the same films, and nothing unpinned, tampered with or unvalidated is screened."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker.answers import Prediction
from worker.config import (
    DEFAULT_BUNDLE,
    DEFAULT_LEARNER,
    INT8_BUNDLE,
    SHIPPED_BUNDLE_SHA256,
    SHIPPED_MODEL_SHA256,
    InferenceSettings,
)
from worker.errors import ConfigError, ModelError
from worker.model.bundle import load_bundle
from worker.model.gate import ImageGate
from worker.model.learner import load_model
from worker.model.predictor import Predictor
from worker.model.stages import prepare_file
from worker.pipeline.hashing import sha256_file

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
CPU = InferenceSettings(device="cpu", batch_size=16)


@pytest.fixture(scope="module")
def learner():
    return load_model(DEFAULT_LEARNER, sha256=SHIPPED_MODEL_SHA256)


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_BUNDLE, sha256=SHIPPED_BUNDLE_SHA256)


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> list[Path]:
    """Real JPEG, PNG and DICOM films: the samples, NIH PNGs, the real DICOMs, and a sample
    re-encoded as a 16-bit PNG."""
    png16 = tmp_path_factory.mktemp("png") / "sixteen-bit.png"
    grey = np.asarray(Image.open(SAMPLES / "NORMAL2-IM-1427-0001.jpeg").convert("L"), dtype=np.uint16)
    Image.fromarray(grey * 257).save(png16)
    nih = sorted((data_dir / "nih_site_sample").rglob("*.png"))[:6]
    dicoms = sorted((data_dir / "dicom").glob("*.dcm"))[:8]
    return [*sorted(SAMPLES.iterdir()), *nih, *dicoms, png16]


def test_the_bundle_gives_fastais_probabilities(learner, bundle, mixed_files: list[Path]) -> None:
    """Within 1e-4 of ``get_preds(dl=learn.dls.test_dl(files))``: fastai's own path, untouched."""
    learn = learner.learner
    with learn.no_bar():
        theirs, _ = learn.get_preds(dl=learn.dls.test_dl(mixed_files, bs=16))
    answers = list(Predictor(bundle, CPU, calibrate=False).predict(mixed_files))
    assert all(isinstance(a, Prediction) for a in answers), [
        a for a in answers if not isinstance(a, Prediction)
    ]
    ours = np.array([[a.probabilities[c] for c in bundle.vocab] for a in answers])
    assert {p.suffix for p in mixed_files} >= {".jpeg", ".png", ".dcm"}
    assert np.abs(ours - theirs.numpy()).max() < 1e-4


def test_the_gate_scores_and_refuses_as_on_torch(learner, bundle, mixed_files: list[Path]) -> None:
    gate = ImageGate.of(bundle)
    assert gate is not None and gate.layer_names == ImageGate.of(learner).layer_names
    scores = []
    for model in (learner, bundle):
        predictor = Predictor(model, CPU, feature_layers=gate.layer_names)
        items = [prepare_file(model, f)[0] for f in mixed_files]
        scores.append(gate.scores(predictor.infer_features(items)[1]))
    torch_scores, onnx_scores = scores
    assert np.max(np.abs(onnx_scores - torch_scores) / torch_scores) < 1e-3
    assert np.array_equal(onnx_scores > gate.limit, torch_scores > gate.limit)
    assert (torch_scores > gate.limit).any() and (torch_scores <= gate.limit).any()


def test_the_shipped_bundle_is_the_export_of_the_shipped_learner(bundle) -> None:
    manifest = bundle.manifest
    assert manifest["source"]["sha256"] == SHIPPED_MODEL_SHA256
    assert (
        bundle.metadata["threshold"]
        == load_model(DEFAULT_LEARNER, sha256=SHIPPED_MODEL_SHA256).metadata["threshold"]
    )
    assert bundle.metadata["calibration"]["method"] == "platt"
    assert bundle.sha256 == sha256_file(DEFAULT_BUNDLE / "bundle.json")[0]


def test_the_shipped_int8_variant_was_validated() -> None:
    manifest = json.loads((INT8_BUNDLE / "bundle.json").read_text())
    validation = manifest["validation"]
    assert validation["accepted"] is True
    assert {s["site"] for s in validation["sites"]} == {"site_sample", "nih_site_sample"}
    for site in validation["sites"]:
        assert site["label_agreement"] >= 0.995 and abs(site["auc_change"]) <= 0.002


@pytest.fixture
def copied(tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, out)
    return out


def test_a_changed_network_is_refused(copied: Path) -> None:
    with (copied / "model.onnx").open("r+b") as fh:
        fh.seek(-100, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-100, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelError, match="does not have the SHA-256 its manifest pins"):
        load_bundle(copied, sha256=SHIPPED_BUNDLE_SHA256)


def test_a_changed_manifest_is_refused_and_an_unpinned_one_needs_trust(copied: Path) -> None:
    manifest = copied / "bundle.json"
    data = json.loads(manifest.read_text())
    data["metadata"]["threshold"] = 0.01
    manifest.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="configuration expects"):
        load_bundle(copied, sha256=SHIPPED_BUNDLE_SHA256)
    with pytest.raises(ModelError, match="no SHA-256 is configured"):
        load_bundle(copied)
    assert load_bundle(copied, trust=True).metadata["threshold"] == 0.01


def test_an_unvalidated_variant_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "int8"
    shutil.copytree(INT8_BUNDLE, out)
    manifest = out / "bundle.json"
    data = json.loads(manifest.read_text())
    data["validation"]["accepted"] = False
    manifest.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="not accepted by its validation"):
        load_bundle(out, trust=True)


def test_the_runtime_must_fit_the_model(learner, bundle) -> None:
    with pytest.raises(ConfigError, match="runtime = onnx needs a model bundle"):
        Predictor(learner, InferenceSettings(device="cpu", runtime="onnx"))
    with pytest.raises(ConfigError, match="runtime = torch needs an exported learner"):
        Predictor(bundle, InferenceSettings(device="cpu", runtime="torch"))
    assert Predictor(bundle, CPU).runtime == "onnx" and Predictor(learner, CPU).runtime == "torch"


def test_a_bundle_screens_with_torch_and_fastai_unimportable(tmp_path: Path) -> None:
    """The lean path imports neither: with both made unimportable, predict still screens."""
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision', 'fastai'): sys.modules[m] = None\n"
        "from worker.cli import main\n"
        "sys.argv = ['xray-worker', 'predict', '--json', sys.argv[1]]\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRAY_SCREEN_")}
    done = subprocess.run(
        [sys.executable, "-c", code, str(SAMPLES)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    labels = sorted(line.get("label") or line.get("outcome") for line in lines)
    assert len(lines) == 6, done.stdout
    assert labels.count("PNEUMONIA") == 2 and labels.count("NORMAL") == 2, labels


def test_export_writes_a_bundle_that_loads(trained_model: Path, tmp_path: Path) -> None:
    """A learner of our own (the small one the tests train) exports and screens."""
    from training.bundle import export_bundle

    model = load_model(trained_model, trust=True)
    manifest = export_bundle(model, tmp_path / "mine")
    mine = load_bundle(manifest, trust=True)
    assert mine.source_sha256 == model.sha256 and mine.vocab == model.vocab
    files = sorted(SAMPLES.glob("*.jpeg"))
    torch_p = Predictor(model, CPU).infer([prepare_file(model, f)[0] for f in files])
    onnx_p = Predictor(mine, CPU).infer([prepare_file(mine, f)[0] for f in files])
    assert np.abs(torch_p - onnx_p).max() < 1e-4
    with pytest.raises(ModelError, match="not empty"):
        export_bundle(model, tmp_path / "mine")
