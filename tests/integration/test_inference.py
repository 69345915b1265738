"""Loading a checked learner and the batched fast path, against fastai's own get_preds."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from worker.answers import Failure, Prediction
from worker.config import InferenceSettings
from worker.errors import ModelError
from worker.model.learner import XrayImage, file_sha256, load_model
from worker.model.predictor import Predictor


def real_files(full_res_dir: Path, dicom_dir: Path) -> list[Path]:
    jpegs = (
        sorted((full_res_dir / "val").rglob("*.jpeg"))
        + sorted((full_res_dir / "train" / "NORMAL").glob("*"))[:8]
    )
    return jpegs + sorted(dicom_dir.glob("*.dcm"))


def test_fast_path_matches_fastai_get_preds(loaded_model, full_res_dir: Path, dicom_dir: Path):
    files = real_files(full_res_dir, dicom_dir)
    learn = loaded_model.learner
    expected, _ = learn.get_preds(dl=learn.dls.test_dl(files, bs=7))
    predictor = Predictor(loaded_model, InferenceSettings(batch_size=5, device="cpu"))
    outcomes = list(predictor.predict(files))
    assert [o.path for o in outcomes] == files
    fast = np.array([[o.probabilities[c] for c in loaded_model.vocab] for o in outcomes])
    assert np.abs(fast - expected.numpy()).max() < 1e-4
    labels = [loaded_model.vocab[i] for i in expected.argmax(1)]
    assert [o.label for o in outcomes] == labels


def test_model_facts_come_from_the_learner(loaded_model):
    assert loaded_model.vocab == ["NORMAL", "PNEUMONIA"]
    assert loaded_model.positive_class == "PNEUMONIA"
    pre = loaded_model.preprocessing
    assert pre.resize == (64, 64)
    assert pre.resize_method == "squish"
    assert pre.image_mode == "L"
    assert pre.min_side == 128
    assert pre.normalize is not None and len(pre.normalize[0]) == 1
    assert loaded_model.image_class is XrayImage
    assert pre.version.startswith("decode-v3;L;draft>=128;resize-squish-64x64;norm-")


def test_bad_files_fail_alone_and_keep_their_place(loaded_model, tmp_path: Path, dicom_dir: Path):
    good = sorted(dicom_dir.glob("*.dcm"))[:3]
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    missing = tmp_path / "gone.jpeg"
    paths = [good[0], bad, good[1], missing, good[2]]
    outcomes = list(Predictor(loaded_model, InferenceSettings(batch_size=2)).predict(paths))
    assert [type(o) for o in outcomes] == [Prediction, Failure, Prediction, Failure, Prediction]
    assert [o.path for o in outcomes] == paths
    assert "text" in outcomes[1].reason and "cannot read" in outcomes[3].reason
    for o in outcomes[::2]:
        assert abs(sum(o.probabilities.values()) - 1) < 1e-5


def test_batch_size_does_not_change_results(loaded_model, dicom_dir: Path):
    files = sorted(dicom_dir.glob("*.dcm"))
    one = [
        o.positive_probability
        for o in Predictor(loaded_model, InferenceSettings(batch_size=1)).predict(files)
    ]
    many = [
        o.positive_probability
        for o in Predictor(loaded_model, InferenceSettings(batch_size=8)).predict(files)
    ]
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_unchecked_model_is_refused_before_unpickling(trained_model: Path):
    with pytest.raises(ModelError, match="no SHA-256 is configured"):
        load_model(trained_model)
    digest = file_sha256(trained_model)
    assert load_model(trained_model, sha256=digest.upper()).sha256 == digest


def test_tampered_model_is_refused(trained_model: Path, tmp_path: Path):
    digest = file_sha256(trained_model)
    tampered = tmp_path / "export.pkl"
    shutil.copy(trained_model, tampered)
    with tampered.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="refusing to load it"):
        load_model(tampered, sha256=digest)


def test_missing_and_garbage_models(tmp_path: Path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "none.pkl", trust=True)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(junk, trust=True)


def test_unknown_positive_class(trained_model: Path):
    with pytest.raises(ModelError, match="positive class 'COVID'"):
        load_model(trained_model, trust=True, positive_class="COVID")


def test_cuda_requested_without_gpu(loaded_model):
    import torch

    from worker.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        Predictor(loaded_model, InferenceSettings(device="cuda"))


def test_a_stored_calibration_rescales_p_and_calibrate_false_gives_the_models_own(
    loaded_model, full_res_dir: Path, dicom_dir: Path
):
    from dataclasses import replace

    from worker.model.calibration import Calibration, margins_of

    files = real_files(full_res_dir, dicom_dir)[:12]
    settings = InferenceSettings(batch_size=5, device="cpu")
    raw = [o.positive_probability for o in Predictor(loaded_model, settings).predict(files)]
    cal = Calibration("platt", 0.5, -0.8, "test")
    metadata = {**loaded_model.metadata, "calibration": cal.to_metadata()}
    calibrated_model = replace(loaded_model, metadata=metadata)
    outcomes = list(Predictor(calibrated_model, settings).predict(files))
    got = np.array([o.positive_probability for o in outcomes])
    assert np.allclose(got, cal.positive(margins_of(np.array(raw))), atol=1e-6)
    assert not np.allclose(got, raw, atol=1e-3)
    assert all(abs(sum(o.probabilities.values()) - 1) < 1e-9 for o in outcomes)
    uncalibrated = Predictor(calibrated_model, settings, calibrate=False)
    own = [o.positive_probability for o in uncalibrated.predict(files)]
    assert np.allclose(own, raw, atol=1e-9)
