"""MODEL_CARD.md, written from the facts of a training run (metrics.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def _row(name: str, s: dict[str, Any]) -> str:
    return (
        f"| {name} | {s['n']} | {s['roc_auc']:.3f} | {_pct(s['sensitivity'])} | {_pct(s['specificity'])} | "
        f"{_pct(s['balanced_accuracy'])} | {_pct(s['accuracy'])} | {_pct(s['precision'])} | {s['f1']:.3f} |"
    )


AUGMENTATIONS = {
    "mild": "rotation up to 10 degrees, zoom up to 1.1, warp 0.1, brightness/contrast 0.2; no flips.",
    "strong": "rotation up to 15 degrees, random crops (zoom up to 1.25, random centre), warp 0.15, "
    "brightness/contrast 0.4, gamma 1/1.5-1.5, 3x3 blur (p 0.2), Gaussian noise up to 0.03 (p 0.3); "
    "no flips.",
}


def _augmentation(r: dict[str, Any]) -> str:
    if not r["augment"]:
        return "none."
    level = r.get("augment_level", "mild")  # older runs recorded no level: they had the mild one
    return f"{level}: {AUGMENTATIONS.get(level, '(see training.data.xray_augmentations)')}"


def _loss(r: dict[str, Any]) -> str:
    parts = ["cross-entropy" + (" with class weights" if r["class_weights"] else "")]
    if r.get("label_smoothing"):
        parts.append(f"label smoothing {r['label_smoothing']}")
    if r.get("mixup"):
        parts.append(f"MixUp (alpha {r['mixup']}) while training")
    return ", ".join(parts) + "."


def write_model_card(path: Path, facts: dict[str, Any]) -> None:
    m, r, d, v = facts["model"], facts["recipe"], facts["data"], facts["validation"]
    evaluations = facts.get("evaluations", {})
    lines = [
        f"# Model card: {m['name']} {m['version']}",
        "",
        "## Intended use",
        "A **screening aid** that flags chest radiographs likely to show pneumonia, so that a",
        "radiologist reads them sooner. It is **not a diagnosis**: every film still needs a",
        "qualified reader, and a negative screen does not rule pneumonia out.",
        "",
        "## Model",
        f"- Architecture: resnet18 (fastai `vision_learner`), one input channel, classes {m['classes']};",
        f"  the positive class is **{m['positive_class']}**.",
        "- Weights: " + ("from a local state dict." if r.get("weights") else "trained from scratch."),
        f"- Input: the shared decoder (`worker.decode`), squished to {r['size']}x{r['size']} "
        f"(`{m['preprocessing']}`).",
        f"- Stored decision threshold: **{m['threshold']:.4f}** on P({m['positive_class']}), chosen on the "
        f"validation split as the highest threshold reaching sensitivity "
        f"{m['target_sensitivity']:.2f} (best specificity at that sensitivity).",
        f"- File: `export.pkl`, SHA-256 `{m.get('sha256', 'see metrics.json')}`.",
        "",
        "## Data",
        f"- Training folder: `{d['source']}` ({d['total']} images: "
        + ", ".join(f"{k} {n}" for k, n in d["counts"].items())
        + ").",
        f"- Split: {r['split']}-level, {int(100 * r['valid_pct'])}% for validation, seed {r['seed']}: "
        f"{d['train']} training images, {d['valid']} validation images"
        + (f" ({d['valid_patients']} patients)" if d.get("valid_patients") else "")
        + ".",
        "- Imbalance: "
        + ("class weights in the loss (inverse frequency)." if r["class_weights"] else "none."),
        "- Augmentation (training split only): " + _augmentation(r),
        "",
        "## Recipe",
        f"`fit_one_cycle({r['epochs']}, {r['lr']})`, batch size {r['batch_size']}, Adam, nothing frozen, "
        f"{facts['training_seconds'] / 60:.0f} minutes on {facts['device']}.",
        f"Loss: {_loss(r)}",
        "",
        "## Results",
        "At the stored threshold. The validation split chose the threshold, so its figures are optimistic;",
        "the other rows were not used for any choice.",
        "",
        "| data | n | ROC AUC | sensitivity | specificity | balanced acc. | accuracy | precision | F1 |",
        "|---|---|---|---|---|---|---|---|---|",
        _row("validation split (patient-aware)", v),
        *[_row(name, s) for name, s in evaluations.items()],
        "",
        "## Limits",
        "- Trained on one paediatric population (Guangzhou Women and Children's Medical Center, ages 1-5):",
        "  adult films, other hospitals, portable/AP films and other equipment are out of distribution.",
        "  Expect lower specificity and sensitivity there (see the adult RSNA row, if present).",
        "- Labels are image-level NORMAL / PNEUMONIA; bacterial vs viral is not distinguished, and",
        "  other findings (effusion, nodules, lines and tubes) are not detected.",
        "- Trained from scratch at low resolution on about 5,000 images: subtle findings can be missed.",
        "- The data set's official test split was not used for training or tuning.",
        "",
        "## Data credit",
        "Kermany D, Zhang K, Goldbaum M (2018), Labeled Optical Coherence Tomography (OCT) and Chest X-Ray",
        "Images for Classification, Mendeley Data v2, doi:10.17632/rscbjbr9sj.2, CC BY 4.0.",
        "",
    ]
    path.write_text("\n".join(lines))


def record_evaluation(model_dir: Path, name: str, summary: dict[str, Any]) -> None:
    """Add an evaluation's figures to a model folder's metrics.json and regenerate its card."""
    facts = json.loads((model_dir / "metrics.json").read_text())
    keep = (
        "n",
        "positives",
        "threshold",
        "accuracy",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "precision",
        "npv",
        "f1",
        "roc_auc",
        "confusion",
    )
    facts.setdefault("evaluations", {})[name] = {k: summary[k] for k in keep if k in summary}
    (model_dir / "metrics.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")
    write_model_card(model_dir / "MODEL_CARD.md", facts)
