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
        *_operating_point(m, facts),
        f"- File: `export.pkl`, SHA-256 `{m.get('sha256', 'see metrics.json')}`.",
        "",
        *_gate_and_calibration(m),
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
        *_results_note(m, facts),
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


def _operating_point(m: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    trained = facts.get("thresholds", {}).get("at_target_sensitivity", m["threshold"])
    profile = m.get("site_profile")
    if not profile:
        return [
            f"- Stored decision threshold: **{m['threshold']:.4f}** on P({m['positive_class']}), "
            f"chosen on the validation split as the highest threshold reaching sensitivity "
            f"{m['target_sensitivity']:.2f} (best specificity at that sensitivity)."
        ]
    scale = f"on the {profile['calibration']}-calibrated P" if profile.get("calibration") else "on P"
    return [
        f"- Operating point: **{profile['threshold']:.4f}** {scale}({m['positive_class']}), the site profile "
        f"`{profile['name']}`, chosen by `xray-train site-check --store` on {profile['checked_on']} on "
        f"`{profile['sample']}` ({profile['n']} films, {profile['patients']} patients) as the highest "
        f"threshold {_rule(profile)} {profile['target_sensitivity']:.2f} there: sensitivity "
        f"{profile['sensitivity']:.3f}, specificity {profile['specificity']:.3f}, "
        f"ROC AUC {profile['auc']:.3f} [{profile['auc_ci'][0]:.3f}-{profile['auc_ci'][1]:.3f}]. "
        "Chosen on the sample it is measured on: "
        "these rates flatter it (site_check.json has what the same choice gave on left-out patients).",
        f"- The threshold stored at training, {trained:.4f}, was chosen on the validation split.",
    ]


def _rule(profile: dict[str, Any]) -> str:
    """Which rule chose a site profile's threshold (profiles before the rule was recorded: the point one)."""
    if profile.get("rule") == "wilson":
        return (
            f"whose lower 95% Wilson bound of sensitivity (here {profile['sensitivity_lower']:.3f}) reaches"
        )
    return "whose sensitivity on the sample reaches"


def _results_note(m: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    if not m.get("site_profile"):
        return [
            "At the stored threshold. The validation split chose the threshold, so its figures are",
            "optimistic; the other rows were not used for any choice.",
        ]
    trained = facts.get("thresholds", {}).get("at_target_sensitivity", m["threshold"])
    return [
        f"The validation row is at the threshold stored at training ({trained:.4f}, on the model's own P),",
        "which that split chose, so its figures are optimistic. The other rows are at the operating",
        "point above, as the worker labels, and were not used for any choice.",
    ]


def _gate_and_calibration(m: dict[str, Any]) -> list[str]:
    lines = []
    gate = m.get("gate")
    if gate:
        lines += [
            "## Gate (what the model refuses to judge)",
            f"- Image gate: the Mahalanobis score over {', '.join(f'`{x}`' for x in gate['layers'])}, "
            f"limit {gate['limit']:.3f}, fitted on {gate['fitted_on']}; "
            f"it refuses {_pct(gate.get('valid_refused'))} of the validation films.",
            "- DICOM attributes are checked before inference (`[gate]`: Modality CR/DX, BodyPartExamined",
            "  CHEST, ViewPosition PA/AP). docs/gate.md has the refusal rates measured on other films.",
            "",
        ]
    cal = m.get("calibration")
    if cal:
        profile = m.get("site_profile") or {}
        ece = profile.get("ece_cross_fitted")
        lines += [
            "## Calibration",
            f"- P({m['positive_class']}) is {cal['method']}-calibrated: sigmoid({cal['scale']:.4f} z "
            f"{cal['bias']:+.4f}) of the logit margin z, fitted on {cal['fitted_on']}"
            + (
                f"; expected calibration error {ece:.3f} on held-out patients (5-fold cross-fit)."
                if ece
                else "."
            ),
            "- Calibration is monotone: it changes no ranking and, with the threshold on its scale,",
            "  no label.",
            "",
        ]
    return lines


def refresh_model_card(
    model_dir: Path, metadata: dict[str, Any], sha256: str, previous: str, **gate_facts: Any
) -> bool:
    """After a model file's metadata changed (gate, site profile, calibration), bring its folder's
    metrics.json and MODEL_CARD.md up to date. False (and nothing written) when the folder has
    no metrics.json, or one of another model (its SHA-256 is not ``previous``)."""
    path = model_dir / "metrics.json"
    if not path.is_file():
        return False
    facts = json.loads(path.read_text())
    if facts.get("model", {}).get("sha256") != previous:
        return False
    model = {k: v for k, v in facts["model"].items() if k not in ("gate", "site_profile", "calibration")}
    model.update({k: metadata[k] for k in ("threshold", "site_profile", "calibration") if metadata.get(k)})
    gate = metadata.get("gate")
    if gate:
        previous = facts["model"].get("gate") or {}
        model["gate"] = {
            "layers": [layer["layer"] for layer in gate["layers"]],
            "limit": gate["limit"],
            "fitted_on": gate.get("fitted_on", ""),
            "valid_refused": gate_facts.get("valid_refused", previous.get("valid_refused")),
        }
    model["sha256"] = sha256
    facts["model"] = model
    path.write_text(json.dumps(facts, indent=2, default=str) + "\n")
    write_model_card(model_dir / "MODEL_CARD.md", facts)
    return True


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
