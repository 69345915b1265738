"""A model is loaded only if its file's SHA-256 is the pinned one: one check for every kind.

A model file decides what the worker says about a patient's film, and an exported learner
(a pickle) runs code when it is loaded, so the file's SHA-256 must be the configured one
(``[model] sha256``, or the shipped model's pin), or the operator must say they trust it
(``--trust-model``). A bundle (``bundle.py``) checks its manifest here, an exported learner
(``learner.py``) its pickle; both load only after this passes.
"""

from __future__ import annotations

from pathlib import Path

from worker.errors import ModelError
from worker.pipeline.hashing import sha256_file


def check_pinned(path: Path, sha256: str, *, trust: bool, what: str, runs_code: bool = False) -> str:
    """The SHA-256 of ``path``, if the file may be loaded: it is ``sha256`` (any case), or
    none is configured and ``trust`` is set. Otherwise ``ModelError`` with what to do.

    ``what`` names the file in the message (``model bundle``, ``model file``); ``runs_code``
    says in it that loading the file would run code."""
    actual = sha256_file(path)[0]
    if sha256 and actual != sha256.lower():
        why = " (a model file runs code when loaded)" if runs_code else ""
        raise ModelError(
            f"{what} {path} has SHA-256 {actual}, but the configuration expects {sha256.lower()}: "
            f"refusing to load it{why}"
        )
    if not sha256 and not trust:
        why = ", and loading a model runs code" if runs_code else ""
        noun = what.split()[-1]
        raise ModelError(
            f"no SHA-256 is configured for {what} {path}{why}. "
            f'If you trust this {noun}, set [model] sha256 = "{actual}" (or pass --trust-model).'
        )
    return actual
