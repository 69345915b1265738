"""Shared fixtures: the real data beside the checkout, and a small learner trained on it.

The skip policy, in one place: a test skips only for hardware this machine cannot have (a
GPU). Whatever else it needs and does not find fails it: the real data (``require`` below),
the Debian tools (dcmtk, dicom3tools, Orthanc, chromium, sqlite3: each test's own check), and
PostgreSQL, for every test marked ``postgres`` (``pytest_runtest_setup`` below; the server
is ``XRAY_SCREEN_TEST_POSTGRES_URL``, default 127.0.0.1:5432/test). ``scripts/test`` installs
and starts all of it; to run without PostgreSQL, deselect those tests by name:
``-m "not postgres"``. pytest's ``-ra`` (pyproject.toml) lists every skip with its reason in
the run's last lines ("short test summary info").
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("XRAY_SCREEN_DATA", ROOT.parent / "shared" / "data"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``postgres`` fails at setup when PostgreSQL does not answer (no skip)."""
    if item.get_closest_marker("postgres") is not None:
        from db_support import require_postgres

        require_postgres()


def require(path: Path) -> Path:
    """Real data is needed: fail loudly (not skip) when the shared folder is missing."""
    if not path.exists():
        pytest.fail(f"real test data missing: {path} (set XRAY_SCREEN_DATA to ../shared/data)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require(DATA)


@pytest.fixture(scope="session")
def dicom_dir(data_dir: Path) -> Path:
    return require(data_dir / "dicom")


@pytest.fixture(scope="session")
def full_res_dir(data_dir: Path) -> Path:
    return require(data_dir / "chest_xray_full")


@pytest.fixture(scope="session")
def small_train_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """40 real images per class from the 224 px training set."""
    src = require(data_dir / "chest_xray_224" / "train")
    dst = tmp_path_factory.mktemp("train")
    rng = random.Random(0)
    for label in ("NORMAL", "PNEUMONIA"):
        (dst / label).mkdir()
        for f in rng.sample(sorted((src / label).iterdir()), 40):
            shutil.copy(f, dst / label / f.name)
    return dst


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, small_train_dir: Path) -> Path:
    """A resnet18 learner trained for one epoch at 64 px with the project's recipe."""
    from training.recipe import Recipe, train

    out = tmp_path_factory.mktemp("model") / "export.pkl"
    train(small_train_dir, out, Recipe(size=64, epochs=1, batch_size=16, lr=1e-3))
    return out


@pytest.fixture(scope="session")
def loaded_model(trained_model: Path):
    from worker.model.learner import load_model

    return load_model(trained_model, trust=True)
