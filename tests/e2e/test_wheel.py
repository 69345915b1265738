"""The wheel works on its own: built, installed (not editable) into a fresh venv, run elsewhere.

``pip install xray-screen`` must be able to migrate a database and screen an X-ray with no
checkout around: the Alembic scripts and the shipped model travel inside the wheel, and the
defaults that point under the checkout in development point at the working directory.

A deliberate shortcut: the wheel is installed with ``--no-deps`` and the heavy dependencies
(torch, fastai, sqlalchemy, ...) are made visible by a ``.pth`` file in the new venv's
site-packages naming this project's ``.venv`` site-packages. Installing torch again would
take minutes and gigabytes (and a network). The ``.pth`` line is appended to ``sys.path``
after the new venv's own site-packages, and the editable install's finder in ``.venv`` is
not run (``.pth`` files in a directory named by a ``.pth`` line are not processed), so
``worker`` can only come from the wheel; the test checks ``worker.__file__`` to be sure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "NORMAL2-IM-1427-0001.jpeg"

# What the wheel must hold besides the code (paths inside the wheel).
SHIPPED_FILES = (
    "worker/shipped_model/site_baseline.json",
    "worker/shipped_model/onnx/bundle.json",
    "worker/shipped_model/onnx/model.onnx",
    "worker/shipped_model/onnx/gate.npz",
    "worker/shipped_model/onnx-int8/bundle.json",
    "worker/shipped_model/onnx-int8/model.onnx",
    "worker/shipped_model/MODEL_CARD.md",
    "worker/shipped_model/metrics.json",
    "worker/db/migrations/env.py",
    "worker/db/migrations/script.py.mako",
)

# Not copied into the build's source tree: what .gitignore ignores, and git's own folder.
_IGNORED_AT_ROOT = {".git", ".venv", ".venv-lean", "build", "dist", "runs", "var", "shared", ".coverage"}
_IGNORED_ANYWHERE = {"__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", ".import_linter_cache"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    ignored = {n for n in names if n in _IGNORED_ANYWHERE or n.endswith((".egg-info", ".pyc"))}
    if Path(folder).resolve() == ROOT:
        ignored |= _IGNORED_AT_ROOT & set(names)
    if Path(folder).resolve() == ROOT / "bench":
        ignored |= {"out"} & set(names)
    return ignored


def _clean_env(venv: Path | None = None) -> dict[str, str]:
    """The environment without this session's settings, virtualenv or import path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XRAY_SCREEN_", "PYTHON", "PIP_")) and k != "VIRTUAL_ENV"
    }
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(args: list[str | Path], *, cwd: Path, env: dict[str, str], timeout: float = 180):
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    work: Path  # the working directory the commands run in, outside the checkout
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def xray_worker(self) -> Path:
        return self.venv / "bin" / "xray-worker"

    def run(self, *args: str | Path, timeout: float = 180):
        return _run(list(args), cwd=self.work, env=self.env, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built from (a copy of) this checkout and installed into a fresh venv."""
    base = tmp_path_factory.mktemp("wheel").resolve()
    assert not base.resolve().is_relative_to(ROOT)
    # Built from a copy so that the build's build/ and *.egg-info do not land in the shared
    # checkout (where a stale build/lib could also leak old modules into the wheel).
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=_ignore, symlinks=True)
    dist = base / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source],
        cwd=base,
        env=_clean_env(),
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("xray_screen-*.whl")

    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base, env=_clean_env())
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    # pip from this project's .venv installs into the new one (pip >= 22.3: --python).
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel]
    done = _run(pip, cwd=base, env=_clean_env(), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    site = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        cwd=base,
        env=_clean_env(venv),
    )
    new_site = Path(site.stdout.strip())
    assert new_site.is_relative_to(venv), site.stdout + site.stderr
    # The shortcut: the project's .venv site-packages (torch, fastai, ...) after the new venv's own.
    (new_site / "xray_screen_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    work = base / "work"
    work.mkdir()
    return Installed(wheel, venv, work, _clean_env(venv))


@pytest.mark.slow
def test_the_wheel_holds_the_migrations_and_the_shipped_model(installed: Installed):
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        versions = [n for n in names if n.startswith("worker/db/migrations/versions/") and n.endswith(".py")]
        network = "worker/shipped_model/onnx/model.onnx"
        model_size = wheel.getinfo(network).file_size if network in names else 0
    missing = [f for f in SHIPPED_FILES if f not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert len(versions) == len(list((ROOT / "migrations" / "versions").glob("*.py")))
    assert model_size == (ROOT / "models" / "pneumonia-resnet18" / "onnx" / "model.onnx").stat().st_size
    # A deployed worker unpickles nothing: the learner stays in the repository.
    assert not any(n.endswith(".pkl") for n in names)
    # Nothing at the top level but the two packages and the metadata (no stray "migrations").
    assert {n.split("/")[0] for n in names} == {"worker", "training", f"{_dist_info(installed.wheel)}"}


def _dist_info(wheel: Path) -> str:
    name, version = wheel.name.split("-")[:2]
    return f"{name}-{version}.dist-info"


@pytest.mark.slow
def test_worker_is_imported_from_the_installed_wheel(installed: Installed):
    probe = (
        "import worker, worker.config as c, worker.db.migrate as m\n"
        "from worker.config import load_settings\n"
        "s = load_settings(None, environ={})\n"
        "print(worker.__file__); print(c.DEFAULT_MODEL); print(m.MIGRATIONS)\n"
        "print(s.inbox.path.resolve()); print(s.database.url)\n"
    )
    result = installed.run(installed.python, "-c", probe)
    assert result.returncode == 0, result.stderr
    module, model, migrations, inbox, url = result.stdout.splitlines()
    for path in (module, model, migrations):
        assert Path(path).is_relative_to(installed.venv), path
        assert not Path(path).is_relative_to(ROOT), path
    assert (Path(model) / "bundle.json").is_file() and (Path(migrations) / "env.py").is_file()
    # Installed, the defaults are relative to the working directory, not to site-packages' parent.
    assert Path(inbox) == installed.work.resolve() / "var" / "inbox"
    assert url == "sqlite:///var/xray-screen.db"


@pytest.mark.slow
def test_the_installed_worker_migrates_screens_and_passes_its_healthcheck(installed: Installed):
    work = installed.work
    db = f"sqlite:///{work / 'r.db'}"
    upgraded = installed.run(installed.xray_worker, "db", "upgrade", "--db", db)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert (work / "r.db").is_file()

    sample = work / SAMPLE.name
    shutil.copy(SAMPLE, sample)
    predicted = installed.run(installed.xray_worker, "predict", sample)
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    (line,) = predicted.stdout.splitlines()
    name, label, _probabilities = line.split("  ")
    assert name == str(sample) and label in ("NORMAL", "PNEUMONIA")
    assert "pneumonia-resnet18" in predicted.stderr

    folders = {name: work / name for name in ("inbox", "processed", "failed")}
    for folder in folders.values():
        folder.mkdir()
    flags = [item for name, folder in folders.items() for item in (f"--{name}", folder)]
    health = installed.run(installed.xray_worker, "healthcheck", *flags, "--db", db)
    assert health.returncode == 0, health.stdout + health.stderr
    assert "FAIL" not in health.stdout
    assert str(installed.venv / "lib") in health.stdout  # the model checked is the wheel's


@pytest.mark.slow
def test_a_missing_model_names_the_setting(installed: Installed):
    result = installed.run(installed.xray_worker, "predict", "--model", installed.work / "none.pkl", SAMPLE)
    assert result.returncode == 78, result.stdout + result.stderr
    assert "[model] path" in result.stderr


def test_every_package_is_in_the_wheel_configuration():
    """The package list in pyproject.toml is explicit (for the mapped data packages): keep it whole."""
    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set(find_packages(str(ROOT), include=["worker", "worker.*", "training", "training.*"]))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    for package, folder in config["package-dir"].items():
        assert package in listed and (ROOT / folder).is_dir(), (package, folder)
