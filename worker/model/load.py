"""One door to a model file: a bundle (ONNX, no torch needed) or an exported learner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.errors import ConfigError
from worker.model.bundle import is_bundle, load_bundle


def load(
    path: Path, *, sha256: str = "", trust: bool = False, positive_class: str = "", runtime: str = "auto"
) -> Any:
    """The model at ``path``, loaded only if its SHA-256 is ``sha256`` (or ``trust``): a
    ``BundleModel`` for a bundle's folder or manifest, else a ``LoadedModel`` (torch, fastai)."""
    if is_bundle(path):
        return load_bundle(path, sha256=sha256, trust=trust, positive_class=positive_class)
    if runtime == "onnx":
        raise ConfigError(
            f"[inference] runtime = onnx, but [model] path {path} is not a model bundle: make one with "
            f"xray-train export {path} --out DIR"
        )
    try:
        from worker.model.learner import load_model
    except ImportError as exc:  # the lean install has no torch or fastai
        raise ConfigError(
            f"[model] path {path} is an exported learner, which needs torch and fastai ({exc.name} is not "
            "installed): use a model bundle (xray-train export), or the full install"
        ) from exc
    return load_model(path, sha256=sha256, trust=trust, positive_class=positive_class)


def learner_of(model: Any) -> Any:
    """The exported learner behind ``model``, for what only torch can do (Grad-CAM heatmaps):
    the model itself, or for a bundle the ``export.pkl`` it was made from, looked for in the
    bundle's folder and the folder above (the shipped layout), and loaded only if its SHA-256
    is the one the bundle's pinned manifest records."""
    from worker.model.bundle import BundleModel

    if not isinstance(model, BundleModel):
        return model
    name, sha256 = model.manifest["source"]["file"], model.source_sha256
    for folder in (model.path.parent, model.path.parent.parent):
        candidate = folder / name
        if candidate.is_file():
            return load(candidate, sha256=sha256)
    raise ConfigError(
        f"heatmaps need the learner {model.path.name} was exported from ({name}, SHA-256 {sha256[:12]}...) "
        f"in {model.path.parent} or the folder above, and the full install; or set [explain] heatmaps = none"
    )
