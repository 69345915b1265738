"""Adapting a model to a site: fine-tune on its labelled films, refit the gate, calibrate.

``xray-train adapt MODEL SITE_DIR --out DIR``. The site's sample is split by patient: the
**adaptation** part trains (and fits the gate's class means and covariance), the
**held-back** part makes every choice that needs films the network did not train on (the
gate's limit, the calibration, the threshold) and gives the figures of the card. Nothing
of the held-back patients is ever trained on. The source model is not changed; the result
is a new model file with its own card, and it is never the shipped default.

The adapted model keeps the source's inference pipeline exactly (decoder, resize,
normalisation): the fine-tuning runs on DataLoaders built with the same transforms, and the
source's (empty) DataLoaders are put back before export.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.site_check import calibration_fit, patient_groups, site_statistics, write_json
from training.split import split_groups


@dataclass(frozen=True)
class AdaptPlan:
    epochs: int = 12
    lr: float = 1e-3
    batch_size: int = 32
    held_back: float = 0.3  # share of the site's patients kept out of training
    seed: int = 42
    augment_level: str = "mild"
    target_sensitivity: float = 0.95
    calibrate: str = "platt"
    refuse_share: float = 0.02  # the gate's limit on the held-back films

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_adapt(
    model: Any,
    site_dir: Path,
    out_dir: Path,
    plan: AdaptPlan,
    *,
    labels_csv: Path | None = None,
    name: str | None = None,
    progress: bool = False,
    echo=print,
) -> dict[str, Any]:
    """Fine-tune ``model`` (a ``LoadedModel``) on the site's sample and write the adapted model,
    metrics.json and MODEL_CARD.md into ``out_dir``. Returns the facts."""
    from training.data import labelled_files
    from training.evaluation import evaluate_files
    from training.gate import layer_features
    from worker.model.calibration import Calibration, margins_of
    from worker.model.gate import ImageGate, fit_gate
    from worker.model.learner import file_sha256, load_model

    start = time.perf_counter()
    if labels_csv is None and (site_dir / "labels.csv").is_file():
        labels_csv = site_dir / "labels.csv"
    listed = labelled_files(site_dir, "test", labels_csv, with_patients=True)
    if not listed:
        raise ValueError(f"no labelled images found in {site_dir}")
    site = name or site_dir.resolve().name
    # The source model's view of the whole sample: which files it can read, and its figures.
    before = evaluate_files(model, [(f, label) for f, label, _ in listed], calibrate=False)
    patient_of = {str(f): pid for f, _, pid in listed}
    files = [p.path for p in before.predictions]
    groups, groups_from = patient_groups(files, [patient_of[str(f)] for f in files])
    y = before.labels.astype(bool)
    train_idx, held_idx = split_groups(groups, plan.held_back, plan.seed)
    if len(set(y[held_idx])) < 2 or len(set(y[train_idx])) < 2:
        raise ValueError("the site sample is too small: each side of the patient split needs both classes")
    echo(
        f"{len(files)} films of {len(set(groups))} patients ({groups_from}): {len(train_idx)} to adapt on, "
        f"{len(held_idx)} held back ({len(set(groups[i] for i in held_idx))} patients)"
    )

    learn = model.learner
    source_dls = learn.dls
    learn.dls = _site_dataloaders(
        model, [files[i] for i in train_idx], y[train_idx], [files[i] for i in held_idx], y[held_idx], plan
    )
    _fine_tune(learn, plan, progress, echo)
    learn.dls = source_dls  # the source's inference pipeline, exactly
    learn.xray_metadata = {}

    with tempfile.TemporaryDirectory() as tmp:
        draft = Path(tmp) / "export.pkl"
        learn.export(draft)
        adapted = load_model(draft, trust=True, positive_class=model.positive_class)
        held_files = [(files[i], model.vocab[int(y[i])]) for i in held_idx]
        after = evaluate_files(adapted, held_files, calibrate=False)
        source_gate = ImageGate.of(model)  # parses the stored statistics: once
        layers = source_gate.layer_names if source_gate else ("penultimate", "0.6")
        f_train, kept, _ = layer_features(adapted, [files[i] for i in train_idx], layers)
        f_held, _, _ = layer_features(adapted, [files[i] for i in held_idx], layers)
    gate = fit_gate(
        f_train,
        y[train_idx][kept].astype(int),
        f_held,
        refuse_share=plan.refuse_share,
        fitted_on=f"{site_dir} ({len(train_idx)} adaptation films; limit on {len(held_idx)} held-back films)",
    )
    y_held, held_groups = y[held_idx], [groups[i] for i in held_idx]
    margins = margins_of(after.p_pos)
    fitted = calibration_fit(
        margins,
        y_held,
        held_groups,
        plan.calibrate,
        plan.target_sensitivity,
        f"{site}: {len(held_idx)} held-back films",
    )
    calibration = Calibration.from_metadata(fitted)
    p_held = calibration.positive(margins)
    stats = site_statistics(
        y_held,
        p_held,
        held_groups,
        stored_threshold=fitted["threshold"],
        target_sensitivity=plan.target_sensitivity,
    )
    stats_before = site_statistics(
        y_held,
        before.p_pos[held_idx],
        held_groups,
        stored_threshold=float(model.metadata.get("threshold") or 0.5),
        target_sensitivity=plan.target_sensitivity,
    )
    today = dt.date.today().isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / "export.pkl"
    metadata = {
        **{
            k: v
            for k, v in model.metadata.items()
            if k not in ("site_profile", "calibration", "gate", "sha256")
        },
        "name": f"{model.name}-{site}",
        "version": today,
        "threshold": fitted["threshold"],
        "target_sensitivity": plan.target_sensitivity,
        "calibration": {k: fitted[k] for k in ("method", "scale", "bias", "fitted_on")},
        "gate": gate.to_metadata(),
        "site_profile": {
            "name": site,
            "threshold": fitted["threshold"],
            "target_sensitivity": plan.target_sensitivity,
            "sensitivity": stats["at_stored_threshold"]["sensitivity"]["value"],
            "specificity": stats["at_stored_threshold"]["specificity"]["value"],
            "auc": stats["auc"],
            "auc_ci": stats["auc_ci"],
            "n": stats["n"],
            "patients": stats["patients"],
            "checked_on": today,
            "sample": f"{site_dir} (held-back patients)",
            "calibration": fitted["method"],
            "ece_cross_fitted": fitted["ece_cross_fitted"],
        },
        "adapted_from": {"name": model.name, "version": model.version, "sha256": model.sha256},
    }
    adapted.learner.xray_metadata = metadata
    adapted.learner.export(out_path.resolve())
    sha = file_sha256(out_path)
    held_refused = float(np.mean(gate.scores(f_held) > gate.limit))
    facts = {
        "model": {**metadata, "sha256": sha, "gate": {"limit": gate.limit, "layers": list(gate.layer_names)}},
        "source": {"path": str(model.path), "name": model.name, "sha256": model.sha256},
        "site": site,
        "sample": str(site_dir),
        "labels": str(labels_csv) if labels_csv else "class folders",
        "plan": plan.as_dict(),
        "split": {
            "patients_from": groups_from,
            "adapt": {"films": len(train_idx), "counts": _counts(y[train_idx], model)},
            "held_back": {
                "films": len(held_idx),
                "counts": _counts(y_held, model),
                "patients": stats["patients"],
            },
        },
        "unreadable": [{"path": str(f.path), "reason": f.reason} for f in before.failures],
        "held_back_before": _brief(stats_before),
        "held_back_after": _brief(stats),
        "calibration": {k: v for k, v in fitted.items() if k != "bins_cross_fitted"},
        "gate": {"limit": gate.limit, "held_back_refused": held_refused},
        "seconds": time.perf_counter() - start,
        "command": sys.argv,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_json(out_dir / "metrics.json", facts)
    write_adapt_card(out_dir / "MODEL_CARD.md", facts)
    return facts


def _site_dataloaders(
    model: Any, train: list[Path], y_train: np.ndarray, held: list[Path], y_held: np.ndarray, plan: AdaptPlan
):
    """DataLoaders over the site's films with the source model's own preprocessing."""
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import IndexSplitter, ItemGetter, Normalize
    from fastai.vision.augment import Resize

    from training.data import xray_augmentations, xray_block

    pre = model.preprocessing
    size = pre.resize[0] if pre.resize else 224
    vocab = model.vocab
    items = [
        (str(f), vocab[int(label)]) for f, label in zip([*train, *held], [*y_train, *y_held], strict=True)
    ]
    normalize = Normalize.from_stats(*pre.normalize, cuda=False) if pre.normalize else Normalize()
    block = DataBlock(
        blocks=(xray_block(size), CategoryBlock(vocab=vocab)),
        get_x=ItemGetter(0),
        get_y=ItemGetter(1),
        splitter=IndexSplitter(list(range(len(train), len(items)))),
        item_tfms=Resize(size, method=pre.resize_method or "squish"),
        batch_tfms=[*xray_augmentations(plan.augment_level), normalize],
    )
    return block.dataloaders(items, bs=plan.batch_size, num_workers=0)


def _fine_tune(learn: Any, plan: AdaptPlan, progress: bool, echo) -> None:
    import fastai.callback.all  # noqa: F401  (fit_one_cycle, no_bar)
    from fastai.losses import CrossEntropyLossFlat

    from training.recipe import class_weights, seed_everything

    seed_everything(plan.seed)
    learn.loss_func = CrossEntropyLossFlat(weight=class_weights(learn.dls))
    learn.model.train()
    if progress:
        learn.fit_one_cycle(plan.epochs, plan.lr)
    else:
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(plan.epochs, plan.lr)
        for i, v in enumerate(learn.recorder.values):
            echo(f"epoch {i + 1}/{plan.epochs}  train_loss {v[0]:.4f}  valid_loss {v[1]:.4f}")


def _counts(y: np.ndarray, model: Any) -> dict[str, int]:
    counts = Counter(model.vocab[model.positive_index] if v else _negative(model) for v in y)
    return dict(sorted(counts.items()))


def _negative(model: Any) -> str:
    return model.vocab[1 - model.positive_index]


def _brief(stats: dict[str, Any]) -> dict[str, Any]:
    at = stats["at_stored_threshold"]
    return {
        "auc": stats["auc"],
        "auc_ci": stats["auc_ci"],
        "threshold": at["threshold"],
        "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
        "ece": stats["calibration"]["ece"],
        "n": stats["n"],
        "patients": stats["patients"],
    }


def write_adapt_card(path: Path, facts: dict[str, Any]) -> None:
    """The adapted model's card: which data, which figures on which split."""
    m, b, a, s = facts["model"], facts["held_back_before"], facts["held_back_after"], facts["split"]
    cal, plan = facts["calibration"], facts["plan"]

    def ci(stats: dict[str, Any]) -> str:
        return f"{stats['auc']:.3f} [{stats['auc_ci'][0]:.3f}-{stats['auc_ci'][1]:.3f}]"

    def rate(r: dict[str, Any]) -> str:
        return f"{r['value']:.3f} [{r['ci'][0]:.3f}-{r['ci'][1]:.3f}] ({r['count']})"

    lines = [
        f"# Model card: {m['name']} {m['version']} (adapted to site {facts['site']})",
        "",
        "A **site-adapted** screening aid, not the shipped default: it was fine-tuned on one site's",
        "labelled films and is meant for that site only. It is not a diagnosis.",
        "",
        "## Source and data",
        f"- Source model: {facts['source']['name']}, SHA-256 `{facts['source']['sha256']}`.",
        f"- Site sample: `{facts['sample']}` (labels: {facts['labels']}), split by patient "
        f"({s['patients_from']}), seed {plan['seed']}:",
        f"  - adaptation part: {s['adapt']['films']} films {s['adapt']['counts']}: fine-tuning, and the",
        "    gate's class means and covariance;",
        f"  - held-back part: {s['held_back']['films']} films {s['held_back']['counts']} of "
        f"{s['held_back']['patients']} patients: the gate's limit, the calibration, the threshold,",
        "    and every figure below. No held-back patient was trained on.",
        f"- Fine-tuning: `fit_one_cycle({plan['epochs']}, {plan['lr']})`, batch {plan['batch_size']}, "
        f"{plan['augment_level']} augmentation, cross-entropy with class weights, nothing frozen.",
        "",
        "## Figures on the held-back patients",
        "| model | ROC AUC [95% CI, bootstrap of patients] | threshold | sensitivity | specificity | ECE |",
        "|---|---|---|---|---|---|",
        f"| source (its own threshold, uncalibrated) | {ci(b)} | {b['threshold']:.4f} | "
        f"{rate(b['sensitivity'])} | {rate(b['specificity'])} | {b['ece']:.3f} |",
        f"| **adapted** ({cal['method']}-calibrated) | **{ci(a)}** | {a['threshold']:.4f} | "
        f"{rate(a['sensitivity'])} | {rate(a['specificity'])} | "
        f"{a['ece']:.3f} in sample, {cal['ece_cross_fitted']:.3f} cross-fitted |",
        "",
        f"The threshold is the highest reaching sensitivity {plan['target_sensitivity']} on the held-back",
        "films, on the calibrated scale, so its sensitivity and specificity above are in-sample for the",
        "threshold (the AUC is not: it needs no threshold). The ECE cross-fitted gives each",
        "held-back patient a calibration fitted on the other held-back patients.",
        "",
        "## Gate",
        f"- Refitted on the adaptation films (layers {', '.join(m['gate']['layers'])}); "
        f"limit {m['gate']['limit']:.3f},",
        f"  set to refuse {plan['refuse_share']:.0%} of the held-back films "
        f"(refuses {facts['gate']['held_back_refused']:.1%} of them).",
        "",
        "## File",
        f"`export.pkl`, SHA-256 `{m['sha256']}`; pin it in `[model] sha256`. "
        f"Adaptation took {facts['seconds']:.0f} s.",
    ]
    if facts["unreadable"]:
        lines.append(f"\n{len(facts['unreadable'])} films of the sample could not be read (metrics.json).")
    path.write_text("\n".join(lines) + "\n")


def adapt_summary(facts: dict[str, Any]) -> list[str]:
    """The lines ``xray-train adapt`` prints."""
    b, a = facts["held_back_before"], facts["held_back_after"]
    return [
        f"held-back patients: AUC {b['auc']:.3f} [{b['auc_ci'][0]:.3f}-{b['auc_ci'][1]:.3f}] before, "
        f"{a['auc']:.3f} [{a['auc_ci'][0]:.3f}-{a['auc_ci'][1]:.3f}] adapted",
        f"adapted at threshold {a['threshold']:.4f} ({facts['calibration']['method']}-calibrated): "
        f"sensitivity {a['sensitivity']['value']:.3f}, specificity {a['specificity']['value']:.3f} "
        f"(held-back, in sample); ECE {facts['calibration']['ece_cross_fitted']:.3f} cross-fitted",
        f"gate refitted: limit {facts['gate']['limit']:.3f}, "
        f"refuses {facts['gate']['held_back_refused']:.1%} of the held-back films",
        f"wrote {facts['model']['name']} (SHA-256 {facts['model']['sha256']})",
    ]
