"""A model bundle: the network as ONNX and everything screening needs in a JSON sidecar.

``xray-train export`` writes a bundle from an ``export.pkl`` (``training/bundle.py``)::

    bundle.json   the manifest: classes, preprocessing, threshold, calibration, site profile,
                  the gate's settings, the source learner's SHA-256, every file's SHA-256
    model.onnx    the network, BatchNorm folded; outputs the logits and the gate's features
    gate.npz      the gate's class means and precision matrices (numpy, no pickle)
    MODEL_CARD.md what the model is, and for a reduced-precision variant how it was validated

Loading a bundle runs no code from it: the manifest is JSON, the arrays are read with
``allow_pickle=False`` and the network is a graph for ONNX Runtime. It is still pinned: the
manifest's SHA-256 is the model's identity (``[model] sha256``), and the manifest pins every
other file, so a changed byte anywhere is refused. Neither fastai nor torch is imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.decode import DecodedImage
from worker.errors import ModelError
from worker.model.pinned import check_pinned
from worker.model.preprocess import DECODE_VERSION, RESIZE_METHODS, Preprocessing, batch_array, item_array
from worker.pipeline.hashing import sha256_file

MANIFEST = "bundle.json"
FORMAT = "xray-screen-bundle"
FORMAT_VERSION = 1
VARIANTS = ("fp32", "int8", "fp16")


def is_bundle(path: Path) -> bool:
    """A bundle's folder, or its manifest."""
    path = Path(path)
    return (path / MANIFEST).is_file() if path.is_dir() else path.name == MANIFEST


def manifest_path(path: Path) -> Path:
    path = Path(path)
    return path / MANIFEST if path.is_dir() else path


@dataclass
class BundleModel:
    """A bundle, checked and opened: what the predictor and the records need of a model."""

    path: Path  # the manifest
    sha256: str  # the manifest's: the model's identity
    manifest: dict[str, Any]
    vocab: list[str]
    positive_index: int
    preprocessing: Preprocessing
    metadata: dict[str, Any]
    network: Path  # model.onnx
    feature_outputs: dict[str, str] = field(default_factory=dict)  # gate layer -> ONNX output name

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.path.parent.name)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version") or self.sha256[:12])

    @property
    def variant(self) -> str:
        return str(self.manifest["variant"])

    @property
    def positive_class(self) -> str:
        return self.vocab[self.positive_index]

    @property
    def source_sha256(self) -> str:
        """The SHA-256 of the ``export.pkl`` this bundle was made from."""
        return str(self.manifest["source"]["sha256"])

    def to_item(self, decoded: DecodedImage) -> np.ndarray:
        return item_array(self.preprocessing, decoded)

    def to_batch(self, items: list[np.ndarray]) -> np.ndarray:
        return batch_array(self.preprocessing, items)

    def blank_item(self) -> np.ndarray:
        height, width = self.preprocessing.resize or (224, 224)
        return self.to_item(DecodedImage(np.zeros((height, width), dtype=np.uint8), "PNG", width, height))


def load_bundle(
    path: Path,
    *,
    sha256: str = "",
    trust: bool = False,
    positive_class: str = "",
    accept_unvalidated: bool = False,
) -> BundleModel:
    """Open a bundle (its folder or its manifest) if the manifest's SHA-256 is the expected
    one and every file it lists has the SHA-256 it says. A reduced-precision variant is
    refused unless its validation against fp32 accepted it (``accept_unvalidated``: only
    for the validation itself)."""
    manifest = manifest_path(path)
    if not manifest.is_file():
        raise ModelError(
            f"model bundle not found: {manifest} (make one with: xray-train export MODEL --out DIR)"
        )
    actual = check_pinned(manifest, sha256, trust=trust, what="model bundle")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read model bundle {manifest}: {exc}") from exc
    _check_format(manifest, data)
    if (
        data["variant"] != "fp32"
        and not accept_unvalidated
        and not data.get("validation", {}).get("accepted")
    ):
        raise ModelError(
            f"{manifest} is a {data['variant']} variant that was not accepted by its validation against fp32 "
            "(see its MODEL_CARD.md): refusing to screen with it"
        )
    folder = manifest.parent
    for name, expected in data["files"].items():
        file = folder / name
        if Path(name).name != name or not file.is_file():
            raise ModelError(f"model bundle {manifest} lists {name!r}, which is not in {folder}")
        if sha256_file(file)[0] != expected:
            raise ModelError(
                f"model bundle file {file} does not have the SHA-256 its manifest pins: refusing it"
            )
    metadata = dict(data["metadata"])
    gate = data.get("gate")
    if gate:
        metadata["gate"] = _gate_metadata(folder / gate["file"], gate)
    vocab = [str(v) for v in data["vocab"]]
    positive = positive_class or str(data["positive_class"])
    if positive not in vocab:
        raise ModelError(f"positive class {positive!r} is not one of the model's classes {vocab}")
    graph = data["graph"]
    return BundleModel(
        path=manifest,
        sha256=actual,
        manifest=data,
        vocab=vocab,
        positive_index=vocab.index(positive),
        preprocessing=Preprocessing.from_json(data["preprocessing"]),
        metadata=metadata,
        network=folder / graph["file"],
        feature_outputs=dict(graph.get("features", {})),
    )


def _check_format(manifest: Path, data: dict[str, Any]) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelError(f"{manifest} is not an xray-screen model bundle")
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{manifest} is a bundle of format version {data.get('format_version')}; this worker reads "
            f"version {FORMAT_VERSION}: export the model again with this version's xray-train export"
        )
    pre = data["preprocessing"]
    if pre.get("decode_version") != DECODE_VERSION:
        raise ModelError(
            f"{manifest} was exported with decoder version {pre.get('decode_version')}, this worker decodes "
            f"with version {DECODE_VERSION}: export it again"
        )
    if pre.get("resize") and pre.get("resize_method") not in RESIZE_METHODS:
        raise ModelError(f"{manifest}: resize method {pre.get('resize_method')!r} is not supported")
    if data.get("variant") not in VARIANTS:
        raise ModelError(f"{manifest}: unknown variant {data.get('variant')!r}")


def _gate_metadata(file: Path, gate: dict[str, Any]) -> dict[str, Any]:
    """The gate's metadata as ``ImageGate.from_metadata`` reads it, its arrays from ``gate.npz``."""
    with np.load(file, allow_pickle=False) as arrays:
        layers = [
            {
                "layer": layer["layer"],
                "scale": layer["scale"],
                "means": arrays[f"means_{i}"],
                "precision": arrays[f"precision_{i}"],
            }
            for i, layer in enumerate(gate["layers"])
        ]
    return {
        "kind": gate["kind"],
        "layers": layers,
        "limit": gate["limit"],
        "fitted_on": gate.get("fitted_on", ""),
    }
