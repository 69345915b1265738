"""Bundles in reduced precision, each validated against fp32 before it may screen.

- **int8**: ONNX Runtime's static quantization (QDQ, weights per channel, activations
  per tensor), its ranges calibrated on real training films, never on noise.
- **fp16**: the graph in half precision, inputs and outputs left fp32, for GPUs.

A variant is a bundle of its own (its own manifest, SHA-256 and card) and is **accepted**
only if, on every labelled site folder given, its labels agree with fp32's on at least
``MIN_AGREEMENT`` of the films and its AUC is within ``MAX_AUC_CHANGE`` of fp32's. The
figures (and the largest change in P) go into its manifest and card; the worker refuses
to load a reduced-precision bundle that was not accepted (``worker/model/bundle.py``).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.bundle import CARD, GATE, NETWORK, export_bundle, write_manifest
from training.metrics import roc_auc
from worker.config import InferenceSettings
from worker.model.bundle import MANIFEST, BundleModel, load_bundle
from worker.model.learner import load_model
from worker.pipeline.hashing import sha256_file

MIN_AGREEMENT = 0.995
MAX_AUC_CHANGE = 0.002
CALIBRATION_BATCH = 32
HEAD_NODES = ("/trunk/trunk.1/", "/classifier/")  # ONNX node names of the head in training.bundle.Graph
SEED = 42


@dataclass
class ExportResult:
    manifest: Path
    sha256: str
    accepted: bool
    lines: list[str] = field(default_factory=list)


def export_variant(
    model_path: Path,
    out: Path,
    *,
    variant: str = "fp32",
    sha256: str = "",
    calibration_dir: Path | None = None,
    calibration_films: int = 512,
    validate_dirs: Sequence[Path] = (),
) -> ExportResult:
    """Export ``model_path`` as a ``variant`` bundle into ``out``, validated on ``validate_dirs``."""
    model = load_model(model_path, sha256=sha256, trust=not sha256)
    if variant == "fp32":
        manifest = export_bundle(model, out)
        card = bundle_card(load_bundle(manifest, trust=True), None)
        _rewrite(manifest, card)
        return ExportResult(manifest, sha256_file(manifest)[0], True, [f"fp32 bundle of {model_path}"])
    with tempfile.TemporaryDirectory(prefix="xray-fp32-") as tmp:
        reference = load_bundle(export_bundle(model, Path(tmp) / "fp32"), trust=True)
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise ValueError(f"{out} is not empty: export into a new folder")
        shutil.copy2(reference.network.parent / GATE, out / GATE)
        if variant == "int8":
            files = training_films(calibration_dir, calibration_films) if calibration_dir else []
            how = quantize_int8(reference, out / NETWORK, files)
        elif variant == "fp16":
            how = convert_fp16(reference, out / NETWORK)
        else:
            raise ValueError(f"unknown variant {variant!r}")
        manifest = dict(reference.manifest)
        manifest["variant"] = variant
        manifest["reduced_precision"] = how
        manifest["reference_sha256"] = reference.sha256
        manifest.pop("files")
        write_manifest(out, manifest, [NETWORK, GATE])
        candidate = load_bundle(out / MANIFEST, trust=True, accept_unvalidated=True)
        sites = [compare(reference, candidate, site) for site in validate_dirs]
    accepted = bool(sites) and all(s["accepted"] for s in sites)
    manifest["validation"] = {
        "min_agreement": MIN_AGREEMENT,
        "max_auc_change": MAX_AUC_CHANGE,
        "sites": sites,
        "accepted": accepted,
    }
    write_manifest(out, manifest, [NETWORK, GATE])
    _rewrite(
        out / MANIFEST, bundle_card(load_bundle(out / MANIFEST, trust=True, accept_unvalidated=True), sites)
    )
    return ExportResult(
        out / MANIFEST, sha256_file(out / MANIFEST)[0], accepted, validation_lines(variant, sites)
    )


def _rewrite(manifest: Path, card: str) -> None:
    """Add the card to a written bundle, and pin it in the manifest."""
    data = json.loads(manifest.read_text(encoding="utf-8"))
    (manifest.parent / CARD).write_text(card, encoding="utf-8")
    write_manifest(manifest.parent, data, [*data.pop("files"), CARD])


# -- making the variants ---------------------------------------------------------------


def training_films(folder: Path, n: int) -> list[Path]:
    """``n`` films drawn at random (seeded) from a folder of training films, classes mixed."""
    files = sorted(
        p for p in Path(folder).rglob("*") if p.suffix.lower() in (".png", ".jpeg", ".jpg", ".dcm")
    )
    if not files:
        raise ValueError(f"no films under {folder}")
    return random.Random(SEED).sample(files, min(n, len(files)))


def quantize_int8(reference: BundleModel, out: Path, films: list[Path]) -> dict[str, Any]:
    """Static int8 quantization of the reference's graph, calibrated on ``films``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = list(_batches(reference, films))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="xray-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(reference.network), str(prepared))
        kept = fp32_nodes(prepared, list(reference.feature_outputs.values()))
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=kept,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return {
        "method": "onnxruntime static quantization, QDQ, weights int8 per channel, activations uint8 "
        "(ranges from the calibration films' extremes); "
        "the layers the image gate reads and the head stay fp32",
        "calibration": f"{len(films)} training films",
        "fp32_nodes": len(kept),
    }


def fp32_nodes(network: Path, outputs: list[str]) -> list[str]:
    """The names of the nodes kept in fp32:

    - those the gate's feature outputs depend on, so that the gate scores a variant's films
      as fp32's and refuses the same films;
    - the head (the fastai head after the body's pooling, ``training.bundle.Graph``): two
      small matrix products, where per-tensor int8 moved P by up to 0.16 on adult films and
      flipped 0.8% of their labels (docs/runtime.md)."""
    import onnx

    graph = onnx.load(str(network)).graph
    head = {node.name for node in graph.node if node.name.startswith(HEAD_NODES)}
    return sorted(_ancestors(graph, outputs) | head)


def _ancestors(graph: Any, outputs: list[str]) -> set[str]:
    producer = {out: node for node in graph.node for out in node.output}
    wanted, todo = set(), list(outputs)
    while todo:
        node = producer.get(todo.pop())
        if node is not None and node.name not in wanted:
            wanted.add(node.name)
            todo.extend(node.input)
    return wanted


def convert_fp16(reference: BundleModel, out: Path) -> dict[str, Any]:
    """The reference's graph in fp16, its input and outputs kept fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    graph = convert_float_to_float16(onnx.load(str(reference.network)), keep_io_types=True)
    onnx.save(graph, str(out))
    return {"method": "weights and activations fp16 (onnxruntime.transformers.float16), fp32 in and out"}


def _batches(model: BundleModel, films: list[Path]) -> Iterator[dict[str, np.ndarray]]:
    from worker.decode import decode_file

    items = [model.to_item(decode_file(f, min_side=model.preprocessing.min_side)) for f in films]
    name = model.manifest["graph"]["input"]
    for start in range(0, len(items), CALIBRATION_BATCH):
        yield {name: model.to_batch(items[start : start + CALIBRATION_BATCH])}


# -- validation ---------------------------------------------------------------------------


def compare(reference: BundleModel, candidate: BundleModel, site: Path) -> dict[str, Any]:
    """The variant against fp32 on one labelled site folder: label agreement, AUC of each,
    the largest change in P, and agreement of the gate's verdicts."""
    from training.data import labelled_files
    from training.evaluation import evaluate_files

    labels_csv = site / "labels.csv" if (site / "labels.csv").is_file() else None
    files = labelled_files(site, "test", labels_csv)
    settings = InferenceSettings(device="cpu")
    ref, var = (evaluate_files(m, files, settings) for m in (reference, candidate))
    if [p.path for p in ref.predictions] != [p.path for p in var.predictions]:
        raise ValueError(f"{site}: the variant failed on other files than fp32")
    agree = np.mean([a.label == b.label for a, b in zip(ref.predictions, var.predictions, strict=True)])
    limit = float(reference.metadata.get("gate", {}).get("limit", np.inf))
    refused = [(a.gate_score or 0) > limit for a in ref.predictions]
    refused_var = [(b.gate_score or 0) > limit for b in var.predictions]
    auc_ref, auc_var = roc_auc(ref.labels, ref.p_pos), roc_auc(var.labels, var.p_pos)
    figures = {
        "site": site.name,
        "films": len(ref.predictions),
        "label_agreement": float(agree),
        "auc_fp32": auc_ref,
        "auc_variant": auc_var,
        "auc_change": auc_var - auc_ref,
        "max_p_change": float(np.abs(ref.p_pos - var.p_pos).max()),
        "gate_agreement": float(np.mean(np.array(refused) == np.array(refused_var))),
    }
    figures["accepted"] = bool(agree >= MIN_AGREEMENT and abs(auc_var - auc_ref) <= MAX_AUC_CHANGE)
    return figures


def validation_lines(variant: str, sites: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"{variant} against fp32 (accepted: agreement >= {MIN_AGREEMENT:.1%}, "
        f"|AUC change| <= {MAX_AUC_CHANGE}):"
    ]
    for s in sites:
        lines.append(
            f"  {s['site']}: {s['films']} films, labels agree {s['label_agreement']:.2%}, "
            f"AUC {s['auc_fp32']:.4f} -> "
            f"{s['auc_variant']:.4f} ({s['auc_change']:+.4f}), largest change in P {s['max_p_change']:.2e}, "
            f"gate verdicts agree {s['gate_agreement']:.2%}: {'ok' if s['accepted'] else 'FAILS'}"
        )
    return lines


def bundle_card(bundle: BundleModel, sites: list[dict[str, Any]] | None) -> str:
    """The bundle's MODEL_CARD.md: what it is, where it came from, and how a variant was validated."""
    meta, m = bundle.metadata, bundle.manifest
    profile = meta.get("site_profile") or {}
    lines = [
        f"# {bundle.name} {bundle.version}: {bundle.variant} bundle",
        "",
        "Screening aid for pneumonia on chest X-rays. NOT A DIAGNOSIS: every film is read by a radiologist.",
        "",
        f"- made from `{m['source']['file']}` SHA-256 `{m['source']['sha256']}` by `xray-train export`",
        f"- runtime: ONNX Runtime (`model.onnx`, opset {m['exported_with']['opset']}), "
        "no torch, fastai or pickle",
        f"- classes: {', '.join(bundle.vocab)}; positive: {bundle.positive_class}",
        f"- preprocessing: {bundle.preprocessing.version}",
        f"- threshold: {meta.get('threshold', 'none')} (site profile {profile.get('name', 'none')})",
        f"- calibration: {(meta.get('calibration') or {}).get('method', 'none')}",
        f"- image gate: {'yes' if meta.get('gate') else 'no'}",
    ]
    if bundle.variant != "fp32":
        lines += ["", "## Reduced precision", "", f"- {m['reduced_precision']['method']}"]
        if "calibration" in m["reduced_precision"]:
            lines.append(f"- calibrated on {m['reduced_precision']['calibration']}")
        lines += [
            "",
            f"Accepted only if labels agree with fp32 on at least {MIN_AGREEMENT:.1%} "
            "of each site's films and "
            f"the AUC is within {MAX_AUC_CHANGE} of fp32's.",
            "",
            "| site | films | label agreement | AUC fp32 | AUC variant | change | largest change in P "
            "| gate verdicts agree | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in sites or []:
            lines.append(
                f"| {s['site']} | {s['films']} | {s['label_agreement']:.2%} | {s['auc_fp32']:.4f} | "
                f"{s['auc_variant']:.4f} | {s['auc_change']:+.4f} | {s['max_p_change']:.2e} | "
                f"{s['gate_agreement']:.2%} | {'accepted' if s['accepted'] else 'NOT accepted'} |"
            )
        accepted = bool(sites) and all(s["accepted"] for s in sites)
        lines += ["", f"**{'Accepted' if accepted else 'Not accepted: do not deploy'}.**"]
    return "\n".join(lines) + "\n"
