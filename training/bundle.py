"""``xray-train export``: an exported learner (``export.pkl``) -> a model bundle.

The bundle (``worker/model/bundle.py`` describes it) holds the network as ONNX with
BatchNorm folded, its outputs the class logits and, for each layer the image gate reads,
that layer's summary exactly as ``FeatureTap`` computes it, so that the gate scores the
same numbers without torch. Everything else screening needs is read from the learner
and written to ``bundle.json``: the classes, the preprocessing, the threshold, the
calibration, the site profile, the gate's statistics (in ``gate.npz``).

After writing, the bundle is loaded back as the worker loads it and run on ONNX Runtime
beside the learner on torch: an export whose probabilities differ by more than
``MAX_P_CHANGE`` is refused. Reduced-precision variants are made from the fp32 bundle
(``training/variants.py``).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from worker.errors import ModelError
from worker.model.bundle import FORMAT, FORMAT_VERSION, MANIFEST, load_bundle
from worker.model.fusion import fold_batchnorm
from worker.model.gate import PENULTIMATE, ImageGate, summary_of
from worker.model.learner import LoadedModel
from worker.model.preprocess import RESIZE_METHODS
from worker.model.taps import FeatureTap, split_head
from worker.pipeline.hashing import sha256_file

OPSET = 17
MAX_P_CHANGE = 1e-4  # fp32 ONNX against the learner on torch, on any input
MAX_GATE_CHANGE = 1e-3  # relative change in the gate's score
NETWORK = "model.onnx"
GATE = "gate.npz"
CARD = "MODEL_CARD.md"  # written by training/variants.py, which describes the bundle it made


class Graph(nn.Module):
    """The network as the bundle runs it: ``image -> (logits, *gate features)``."""

    def __init__(self, net: nn.Module, layers: tuple[str, ...]):
        super().__init__()
        split = split_head(net)
        if split is None:
            raise ModelError("only a fastai vision learner (body + head ending in a Linear) can be exported")
        self.trunk, self.classifier = split
        self.net = net
        self.layers = layers
        self._tap = FeatureTap(net, layers, summary=summarise_exportable)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.trunk(x)
        logits = self.classifier(feats)
        caught = {**self._tap.take(), PENULTIMATE: feats}
        return (logits, *(caught[name].flatten(1) for name in self.layers))


def summarise_exportable(o: torch.Tensor, how: str) -> torch.Tensor:
    """``worker.model.gate.summarise`` in operations ONNX has: adaptive pooling to a grid
    that does not divide the map is written out as the same bins (PyTorch's: from
    floor(i * n / g) to ceil((i + 1) * n / g))."""
    if o.dim() != 4:
        return o
    grid = summary_of(how)
    if not grid:
        return torch.cat([o.mean(dim=(2, 3)), o.std(dim=(2, 3))], dim=1)
    h, w = int(o.shape[2]), int(o.shape[3])
    rows = []
    for i in range(grid):
        r0, r1 = (i * h) // grid, -((-(i + 1) * h) // grid)
        cols = [
            o[:, :, r0:r1, (j * w) // grid : -((-(j + 1) * w) // grid)].mean(dim=(2, 3)) for j in range(grid)
        ]
        rows.append(torch.stack(cols, dim=2))
    return torch.stack(rows, dim=2)  # N x C x grid x grid, as adaptive_avg_pool2d


def export_bundle(model: LoadedModel, out: Path) -> Path:
    """Write ``model`` as an fp32 bundle into ``out`` (a new or empty folder); the manifest."""
    pre = model.preprocessing
    if pre.resize and pre.resize_method not in RESIZE_METHODS:
        raise ModelError(
            f"{model.path}: resize method {pre.resize_method!r} has no numpy equivalent yet "
            f"(supported: {', '.join(RESIZE_METHODS)})"
        )
    if getattr(model.learner.loss_func, "activation", None) is not None and not _is_softmax(model):
        raise ModelError(f"{model.path}: only a softmax classifier can be exported")
    out = _fresh(out)
    net, _ = fold_batchnorm(model.learner.model)
    gate = model.metadata.get("gate") or None
    layers = tuple(str(layer["layer"]) for layer in gate["layers"]) if gate else ()
    graph = Graph(net, layers).eval()
    height, width = pre.resize or (224, 224)
    example = torch.zeros(2, pre.channels, height, width)
    outputs = ["logits", *(f"features_{i}" for i in range(len(layers)))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(
            graph,
            (example,),
            str(out / NETWORK),
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["image", *outputs]},
            opset_version=OPSET,
            dynamo=False,
        )
    files = [NETWORK]
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "variant": "fp32",
        "exported_with": {"torch": torch.__version__, "opset": OPSET},
        "source": {"file": model.path.name, "sha256": model.sha256},
        "vocab": model.vocab,
        "positive_class": model.positive_class,
        "activation": "softmax",
        "preprocessing": pre.to_json(),
        "graph": {
            "file": NETWORK,
            "input": "image",
            "logits": "logits",
            "features": {name: f"features_{i}" for i, name in enumerate(layers)},
        },
        "metadata": {k: v for k, v in model.metadata.items() if k != "gate"},
    }
    if gate:
        manifest["gate"] = _write_gate(out / GATE, gate)
        files.append(GATE)
    write_manifest(out, manifest, files)
    check_against_learner(model, out / MANIFEST)
    return out / MANIFEST


def write_manifest(out: Path, manifest: dict[str, Any], files: list[str]) -> str:
    """Pin every file by its SHA-256 in the manifest, write it; the manifest's own SHA-256."""
    manifest["files"] = {name: sha256_file(out / name)[0] for name in sorted(files)}
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    (out / MANIFEST).write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def check_against_learner(model: LoadedModel, manifest: Path, items: list[Any] | None = None) -> float:
    """Run the bundle (ONNX Runtime, numpy preprocessing) and the learner (torch) on the same
    items; the largest change in any class probability, refused above ``MAX_P_CHANGE``, or
    in the gate's score, refused above ``MAX_GATE_CHANGE`` (relative)."""
    from worker.config import InferenceSettings
    from worker.decode import DecodedImage
    from worker.model.predictor import Predictor

    rng = np.random.default_rng(0)
    if items is None:
        height, width = model.preprocessing.resize or (224, 224)
        images = [rng.integers(0, 256, (height + 37 * k, width + 11 * k), dtype=np.uint8) for k in range(4)]
        items = [DecodedImage(image, "PNG", image.shape[1], image.shape[0]) for image in images]
    settings = InferenceSettings(device="cpu")
    bundle = load_bundle(manifest, trust=True)
    gate = ImageGate.of(model)
    layers = gate.layer_names if gate else ()
    theirs = Predictor(model, settings, calibrate=False, feature_layers=layers).infer_features(
        [model.to_item(d) for d in items]
    )
    ours = Predictor(bundle, settings, calibrate=False, feature_layers=layers).infer_features(
        [bundle.to_item(d) for d in items]
    )
    change = float(np.abs(theirs[0] - ours[0]).max())
    if not change <= MAX_P_CHANGE:
        raise ModelError(f"the exported network's probabilities differ from the learner's by {change:.2e}")
    if gate is not None:
        a, b = gate.scores(theirs[1]), gate.scores(ours[1])
        drift = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-6)))
        if not drift <= MAX_GATE_CHANGE:
            raise ModelError(f"the exported network's gate scores differ from the learner's by {drift:.2e}")
    return change


def _write_gate(file: Path, gate: dict[str, Any]) -> dict[str, Any]:
    arrays = {}
    for i, layer in enumerate(gate["layers"]):
        arrays[f"means_{i}"] = np.asarray(layer["means"], dtype=np.float32)
        arrays[f"precision_{i}"] = np.asarray(layer["precision"], dtype=np.float32)
    np.savez(file, **arrays)
    return {
        "file": file.name,
        "kind": gate["kind"],
        "limit": float(gate["limit"]),
        "fitted_on": gate.get("fitted_on", ""),
        "layers": [
            {"layer": str(layer["layer"]), "scale": float(layer["scale"])} for layer in gate["layers"]
        ],
    }


def _is_softmax(model: LoadedModel) -> bool:
    logits = torch.tensor([[0.3, -1.2]])
    activation = model.learner.loss_func.activation
    return bool(torch.allclose(activation(logits), torch.softmax(logits, dim=1)))


def _fresh(out: Path) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out} is not empty: export into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    return out
