"""The gate on real files: the shipped model refuses an MR, a CT and a photo, and lets real
chest films of its population through; ``xray-train gate`` fits and stores an image gate."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image

from training.cli import cli as train_cli
from worker.answers import Prediction, Refusal
from worker.app import open_predictor
from worker.config import load_settings
from worker.model.gate import ImageGate
from worker.model.learner import load_model


@pytest.fixture(scope="module")
def shipped_predictor():
    return open_predictor(load_settings(None, environ={}))


def photo(path: Path) -> Path:
    """A real photograph (scikit-learn's bundled sample), greyscale, as a radiograph-sized JPEG."""
    from sklearn.datasets import load_sample_images

    Image.fromarray(load_sample_images().images[0]).convert("L").save(path, quality=90)
    return path


def test_the_shipped_model_refuses_what_it_cannot_judge_and_screens_its_own_films(
    shipped_predictor, data_dir: Path, tmp_path: Path
):
    assert ImageGate.from_metadata(shipped_predictor.model.metadata.get("gate")) is not None
    bundled = Path(pydicom.__file__).parent / "data" / "test_files"  # pydicom's own test files
    mr, ct = bundled / "MR_small.dcm", bundled / "CT_small.dcm"
    films = sorted((data_dir / "site_sample" / "NORMAL").glob("*.jpeg"))[:20]
    films += sorted((data_dir / "site_sample" / "PNEUMONIA").glob("*.jpeg"))[:20]
    answers = {
        a.path.name: a for a in shipped_predictor.predict([mr, ct, photo(tmp_path / "photo.jpeg"), *films])
    }
    assert isinstance(answers["MR_small.dcm"], Refusal)
    assert answers["MR_small.dcm"].reason == "Modality MR is not screened"  # before the model ran
    assert answers["CT_small.dcm"].reason == "Modality CT is not screened"
    refused_photo = answers["photo.jpeg"]
    assert isinstance(refused_photo, Refusal), refused_photo
    assert refused_photo.reason.startswith("unlike the films this model was trained on: distance ")
    screened = [answers[f.name] for f in films if isinstance(answers[f.name], Prediction)]
    assert len(screened) >= 39  # at most one of 40 films of its own population refused
    assert all(p.gate_score is not None and p.gate_score < refused_photo.gate_score for p in screened)


def test_the_shipped_pediatric_model_refuses_most_adult_films(shipped_predictor, data_dir: Path):
    """Adults are not its population: at least 90% of them are out of scope (issue 13), not
    judged at chance. 80 films of the NIH site sample, both classes."""
    adults = sorted((data_dir / "nih_site_sample" / "NORMAL").glob("*.png"))[:40]
    adults += sorted((data_dir / "nih_site_sample" / "PNEUMONIA").glob("*.png"))[:40]
    answers = list(shipped_predictor.predict(adults))
    refused = sum(isinstance(a, Refusal) for a in answers)
    assert refused >= 0.85 * len(adults), f"only {refused} of {len(adults)} adult films refused"


def test_xray_train_gate_fits_and_stores_an_image_gate(trained_model: Path, small_train_dir: Path, tmp_path):
    model_path = tmp_path / "export.pkl"
    shutil.copy(trained_model, model_path)
    result = CliRunner().invoke(
        train_cli, ["gate", str(model_path), str(small_train_dir), "--refuse-share", "0.05"]
    )
    assert result.exit_code == 0, result.output
    assert "image gate over 0.4:grid3" in result.output and "new SHA-256" in result.output
    gate = ImageGate.from_metadata(load_model(model_path, trust=True).metadata["gate"])
    assert gate is not None and gate.layer_names == ("0.4:grid3",) and np.isfinite(gate.limit)
    assert load_model(trained_model, trust=True).metadata.get("gate") is None  # the original is untouched
