"""A model is loaded only if its file's SHA-256 is the pinned one (``worker/model/pinned.py``),
the same check for a bundle's manifest and an exported learner."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from worker.errors import ModelError
from worker.model.pinned import check_pinned


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "bundle.json"
    path.write_bytes(b'{"format": 1}\n')
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_pinned_hash_in_either_case_loads_and_is_the_model_identity(model):
    path, sha = model
    assert check_pinned(path, sha, trust=False, what="model bundle") == sha
    assert check_pinned(path, sha.upper(), trust=False, what="model bundle") == sha


def test_another_hash_is_refused_even_when_trusted(model):
    path, sha = model
    expects = f"has SHA-256 {sha}, but the configuration expects {'0' * 64}: refusing to load it$"
    with pytest.raises(ModelError, match=expects):
        check_pinned(path, "0" * 64, trust=True, what="model bundle")
    with pytest.raises(ModelError, match=r"refusing to load it \(a model file runs code when loaded\)"):
        check_pinned(path, "0" * 64, trust=True, what="model file", runs_code=True)


def test_no_hash_loads_only_when_trusted_and_the_refusal_gives_the_hash_to_pin(model):
    path, sha = model
    assert check_pinned(path, "", trust=True, what="model bundle") == sha
    with pytest.raises(ModelError, match="no SHA-256 is configured for model bundle") as refused:
        check_pinned(path, "", trust=False, what="model bundle")
    pin = f'If you trust this bundle, set [model] sha256 = "{sha}" (or pass --trust-model).'
    assert str(refused.value).endswith(pin)
    runs_code = r"model file .*, and loading a model runs code\. If you trust this file"
    with pytest.raises(ModelError, match=runs_code):
        check_pinned(path, "", trust=False, what="model file", runs_code=True)
