"""Adapting a model to a site: fine-tune on its labelled films, refit the gate, calibrate.

``xray-train adapt MODEL SITE_DIR --out DIR``. Every labelled film of the site serves twice,
never for the same thing at once (**cross-fitting**):

- the site's patients are split into ``folds`` groups; for each, a copy of the source model is
  fine-tuned on the other groups and scores the films of this one. So every film gets a score
  (and a gate score) from a model that never saw its patient;
- those cross-fitted scores fit the calibration, choose the operating point
  (``training/operating.py``: by default the highest threshold whose lower 95% bound of
  sensitivity reaches the target) and give every figure of the card;
- the adapted model itself is fine-tuned on all the films, with the same recipe.

An operating point that is not deployable (the sensitivity interval cannot reach the target on
this many positives, or specificity's lower bound is below ``min_specificity``) is refused: no
model is written, and the card and metrics.json say what it would take (how many more labelled
films of each class). The source model is not changed; the result is a new model file with
its own card, and it is never the shipped default.

The adapted model keeps the source's inference pipeline exactly (decoder, resize,
normalisation): the fine-tuning runs on DataLoaders built with the same transforms, and the
source's (empty) DataLoaders are put back before export.
"""

from __future__ import annotations

import datetime as dt
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.operating import MIN_SPECIFICITY, choose, needs_words
from training.site_check import calibration_fit, patient_groups, site_statistics, write_json


@dataclass(frozen=True)
class AdaptPlan:
    epochs: int = 12
    lr: float = 1e-3
    batch_size: int = 32
    folds: int = 5  # cross-fitting: each film scored by a model fine-tuned without its patient
    seed: int = 42
    augment_level: str = "mild"
    target_sensitivity: float = 0.95
    rule: str = "wilson"  # how the operating point is chosen (training/operating.py)
    min_specificity: float = MIN_SPECIFICITY
    calibrate: str = "platt"
    refuse_share: float = 0.02  # the gate's limit: this share of films it did not train on

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def patient_folds(groups: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """The fold (0 .. folds-1) of every film: patients shuffled with ``seed`` and dealt out in
    turn, so a patient's films share a fold and the folds differ by at most one patient."""
    patients = sorted(set(groups))
    if len(patients) < folds:
        raise ValueError(f"the site sample has {len(patients)} patients: too few for {folds} folds")
    random.Random(seed).shuffle(patients)
    fold_of = {pid: i % folds for i, pid in enumerate(patients)}
    return np.array([fold_of[g] for g in groups])


@dataclass(frozen=True)
class _Fold:
    """What one cross-fitting fold gives: scores of its held films, and its gate's settings."""

    held: np.ndarray  # indexes of the films it scored
    p_pos: np.ndarray  # their P(positive), uncalibrated
    gate_scores: np.ndarray  # their image-gate scores by the fold's own gate
    gate_limit: float
    layer_scales: dict[str, float]


def run_adapt(
    model: Any,
    site_dir: Path,
    out_dir: Path,
    plan: AdaptPlan,
    *,
    labels_csv: Path | None = None,
    name: str | None = None,
    progress: bool = False,
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Fine-tune ``model`` (a ``LoadedModel``) on the site's sample and write metrics.json,
    MODEL_CARD.md and, if its operating point is deployable, the adapted model into ``out_dir``.
    Returns the facts (``facts["deployable"]``)."""
    from training.data import labelled_files
    from training.evaluation import evaluate_files
    from worker.model.calibration import Calibration, margins_of
    from worker.model.gate import ImageGate

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
    if y.all() or not y.any():
        raise ValueError("the site sample needs films of both classes")
    fold_of = patient_folds(groups, plan.folds, plan.seed)
    echo(
        f"{len(files)} films of {len(set(groups))} patients ({groups_from}); {plan.folds} folds of patients: "
        f"{plan.folds} fine-tunings to score every film without its patient, and one on all films"
    )
    source_gate = ImageGate.of(model)  # parses the stored statistics: once
    layers = source_gate.layer_names if source_gate else ("penultimate", "0.6")

    folds = [
        _cross_fit_fold(model, files, y, fold_of, k, layers, plan, progress, echo) for k in range(plan.folds)
    ]
    p_cross = np.empty(len(files))
    gate_cross = np.empty(len(files))
    for fold in folds:
        p_cross[fold.held] = fold.p_pos
        gate_cross[fold.held] = fold.gate_scores / fold.gate_limit  # > 1: its fold's gate refuses it

    margins = margins_of(p_cross)
    fitted = calibration_fit(
        margins,
        y,
        groups,
        plan.calibrate,
        plan.target_sensitivity,
        f"{site}: {len(files)} films, cross-fitted ({plan.folds} folds)",
        rule=plan.rule,
    )
    p_calibrated = Calibration.from_metadata(fitted).positive(margins)
    point = choose(y, p_calibrated, plan.target_sensitivity, plan.rule, min_specificity=plan.min_specificity)
    stats = site_statistics(
        y,
        p_calibrated,
        groups,
        stored_threshold=point.threshold,
        target_sensitivity=plan.target_sensitivity,
        rule=plan.rule,
        min_specificity=plan.min_specificity,
    )
    in_use = Calibration.of(model)  # the source as the worker labels with it: its calibration, its threshold
    stats_before = site_statistics(
        y,
        in_use.positive(margins_of(before.p_pos)) if in_use is not None else before.p_pos,
        groups,
        stored_threshold=float(model.metadata.get("threshold") or 0.5),
        target_sensitivity=plan.target_sensitivity,
        rule=plan.rule,
        min_specificity=plan.min_specificity,
    )
    today = dt.date.today().isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "export.pkl").unlink(missing_ok=True)  # never leave an earlier run's model beside this card
    facts: dict[str, Any] = {
        "site": site,
        "sample": str(site_dir),
        "labels": str(labels_csv) if labels_csv else "class folders",
        "positive_class": model.positive_class,
        "negative_class": _negative(model),
        "source": {"path": str(model.path), "name": model.name, "sha256": model.sha256},
        "plan": plan.as_dict(),
        "split": {
            "patients_from": groups_from,
            "films": len(files),
            "patients": len(set(groups)),
            "counts": _counts(y, model),
            "folds": [
                {
                    "films": len(f.held),
                    "patients": len({groups[i] for i in f.held}),
                    "counts": _counts(y[f.held], model),
                }
                for f in folds
            ],
        },
        "unreadable": [{"path": str(f.path), "reason": f.reason} for f in before.failures],
        "before": _brief(stats_before),
        "cross_fitted": _brief(stats),
        "operating_point": point.as_dict(),
        "deployable": point.deployable,
        "calibration": {k: v for k, v in fitted.items() if k != "bins_cross_fitted"},
        "gate": {
            "limit": float(np.median([f.gate_limit for f in folds])),
            "cross_fitted_refused": float(np.mean(gate_cross > 1.0)),
        },
    }
    if point.deployable:
        adapted, gate = _final_model(model, files, y, layers, folds, plan, progress, echo, site_dir)
        metadata = {
            **{
                k: v
                for k, v in model.metadata.items()
                if k not in ("site_profile", "calibration", "gate", "sha256")
            },
            "name": f"{model.name}-{site}",
            "version": today,
            "threshold": point.threshold,
            "target_sensitivity": plan.target_sensitivity,
            "calibration": {k: fitted[k] for k in ("method", "scale", "bias", "fitted_on")},
            "gate": gate.to_metadata(),
            "site_profile": {
                "name": site,
                "threshold": point.threshold,
                "target_sensitivity": plan.target_sensitivity,
                "rule": plan.rule,
                "sensitivity": point.sensitivity,
                "sensitivity_lower": point.sensitivity_lower,
                "specificity": point.specificity,
                "specificity_lower": point.specificity_lower,
                "auc": stats["auc"],
                "auc_ci": stats["auc_ci"],
                "n": stats["n"],
                "patients": stats["patients"],
                "checked_on": today,
                "sample": f"{site_dir} (cross-fitted, {plan.folds} folds of patients)",
                "calibration": fitted["method"],
                "ece_cross_fitted": fitted["ece_cross_fitted"],
            },
            "adapted_from": {"name": model.name, "version": model.version, "sha256": model.sha256},
        }
        out_path = out_dir / "export.pkl"
        adapted.learner.xray_metadata = metadata
        adapted.learner.export(out_path.resolve())
        from worker.model.learner import file_sha256

        facts["model"] = {
            **metadata,
            "sha256": file_sha256(out_path),
            "gate": {"limit": gate.limit, "layers": list(gate.layer_names)},
        }
    else:
        facts["model"] = {"name": f"{model.name}-{site}", "version": today, "written": False}
    facts["seconds"] = time.perf_counter() - start
    facts["command"] = sys.argv
    facts["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    write_json(out_dir / "metrics.json", facts)
    write_adapt_card(out_dir / "MODEL_CARD.md", facts)
    return facts


def _fine_tuned(
    model: Any,
    train: list[Path],
    y_train: np.ndarray,
    valid: list[Path],
    y_valid: np.ndarray,
    plan: AdaptPlan,
    progress: bool,
    echo: Callable[[str], Any],
    tmp: Path,
) -> Any:
    """A fresh copy of the source model, fine-tuned on ``train``, exported and loaded back as the
    worker loads it (``valid`` is only watched, never trained on)."""
    from training.recipe import seed_everything
    from worker.model.learner import load_model

    copy = load_model(model.path, sha256=model.sha256, positive_class=model.positive_class)
    learn = copy.learner
    source_dls = learn.dls
    seed_everything(plan.seed)  # before the DataLoaders: their shuffling draws from it too
    learn.dls = _site_dataloaders(model, train, y_train, valid, y_valid, plan)
    _fine_tune(learn, plan, progress, echo)
    learn.dls = source_dls  # the source's inference pipeline, exactly
    learn.xray_metadata = {}
    draft = tmp / "export.pkl"
    learn.export(draft)
    return load_model(draft, trust=True, positive_class=model.positive_class)


def _cross_fit_fold(
    model: Any,
    files: list[Path],
    y: np.ndarray,
    fold_of: np.ndarray,
    k: int,
    layers: tuple[str, ...],
    plan: AdaptPlan,
    progress: bool,
    echo: Callable[[str], Any],
) -> _Fold:
    """Fine-tune without fold ``k``'s patients; score its films, and fit the fold's own gate."""
    from training.evaluation import evaluate_files
    from training.gate import layer_features
    from worker.model.gate import fit_gate

    train = np.flatnonzero(fold_of != k)
    held = np.flatnonzero(fold_of == k)
    if len(set(y[train])) < 2:
        raise ValueError(
            f"fold {k + 1}: the films left to train on are of one class: the site sample is too small"
        )
    echo(f"fold {k + 1}/{plan.folds}: fine-tuning on {len(train)} films, scoring {len(held)}")
    with tempfile.TemporaryDirectory() as tmp:
        fold_model = _fine_tuned(
            model,
            [files[i] for i in train],
            y[train],
            [files[i] for i in held],
            y[held],
            plan,
            progress,
            echo,
            Path(tmp),
        )
        scored = evaluate_files(
            fold_model, [(files[i], model.vocab[int(y[i])]) for i in held], calibrate=False
        )
        f_train, kept, _ = layer_features(fold_model, [files[i] for i in train], layers)
        f_held, held_kept, _ = layer_features(fold_model, [files[i] for i in held], layers)
    if len(scored.predictions) != len(held) or len(held_kept) != len(held):
        raise ValueError(f"fold {k + 1}: a film the source model read could not be read again")
    gate = fit_gate(f_train, y[train][kept].astype(int), f_held, refuse_share=plan.refuse_share)
    return _Fold(
        held=held,
        p_pos=scored.p_pos,
        gate_scores=gate.scores(f_held),
        gate_limit=gate.limit,
        layer_scales={layer.layer: layer.scale for layer in gate.layers},
    )


def _final_model(
    model: Any,
    files: list[Path],
    y: np.ndarray,
    layers: tuple[str, ...],
    folds: list[_Fold],
    plan: AdaptPlan,
    progress: bool,
    echo: Callable[[str], Any],
    site_dir: Path,
) -> tuple[Any, Any]:
    """The adapted model, fine-tuned on every film, and its gate: class means and covariance of its
    own features on all films; each layer's scale and the limit are the folds' medians (each set on
    films its fold's model did not train on)."""
    from training.gate import layer_features
    from worker.model.gate import ImageGate, LayerStats, fit_layer

    echo(f"the adapted model: fine-tuning on all {len(files)} films")
    with tempfile.TemporaryDirectory() as tmp:
        adapted = _fine_tuned(model, files, y, [], np.array([], dtype=bool), plan, progress, echo, Path(tmp))
        features, kept, _ = layer_features(adapted, files, layers)
    stats = []
    for name in layers:
        fitted = fit_layer(name, features[name], y[kept].astype(int))
        scale = float(np.median([f.layer_scales[name] for f in folds]))
        stats.append(LayerStats(name, fitted.means, fitted.precision, scale))
    gate = ImageGate(
        tuple(stats),
        float(np.median([f.gate_limit for f in folds])),
        f"{site_dir} ({len(files)} films; scales and limit cross-fitted over {plan.folds} folds)",
    )
    return adapted, gate


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
    values = learn.recorder.values
    if values:
        first, last = values[0], values[-1]
        scored = len(last) > 1 and last[1] is not None and np.isfinite(last[1])
        watched = f", loss on the films it scores {_loss(last[1])}" if scored else ""
        echo(f"  {plan.epochs} epochs: train_loss {_loss(first[0])} -> {_loss(last[0])}{watched}")


def _loss(value: Any) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.4f}"


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


def _rate(r: dict[str, Any]) -> str:
    return f"{r['value']:.3f} [{r['ci'][0]:.3f}-{r['ci'][1]:.3f}] ({r['count']})"


def _auc(stats: dict[str, Any]) -> str:
    return f"{stats['auc']:.3f} [{stats['auc_ci'][0]:.3f}-{stats['auc_ci'][1]:.3f}]"


def refusal_line(facts: dict[str, Any]) -> str:
    """Why an adapted model was not written, and what would change that."""
    point = facts["operating_point"]
    needs = needs_words(
        point["needs"], facts["split"]["films"], facts["positive_class"], facts["negative_class"]
    )
    return f"NOT WRITTEN: its operating point is not deployable: {point['refused']}; {needs}"


def write_adapt_card(path: Path, facts: dict[str, Any]) -> None:
    """The adapted model's card (or, when its operating point was refused, why it was not written):
    which data, which figures, on which films."""
    m, b, a, s = facts["model"], facts["before"], facts["cross_fitted"], facts["split"]
    cal, plan, point = facts["calibration"], facts["plan"], facts["operating_point"]
    title = f"# Model card: {m['name']} {m['version']} (adapted to site {facts['site']})"
    lines = [title, ""]
    if facts["deployable"]:
        lines += [
            "A **site-adapted** screening aid, not the shipped default: it was fine-tuned on one site's",
            "labelled films and is meant for that site only. It is not a diagnosis.",
        ]
    else:
        lines += [
            f"**{refusal_line(facts)}**",
            "",
            "No model file was written. The figures below are what the adaptation gave.",
        ]
    target = plan["target_sensitivity"]
    rule = (
        f"the highest threshold whose lower 95% Wilson bound of sensitivity reaches {target}"
        if plan["rule"] == "wilson"
        else f"the highest threshold whose sensitivity on the films reaches {target}"
    )
    lines += [
        "",
        "## Source and data",
        f"- Source model: {facts['source']['name']}, SHA-256 `{facts['source']['sha256']}`.",
        f"- Site sample: `{facts['sample']}` (labels: {facts['labels']}): {s['films']} films {s['counts']} "
        f"of {s['patients']} patients ({s['patients_from']}).",
        f"- Cross-fitting: the patients dealt into {plan['folds']} folds (seed {plan['seed']}); for each",
        "  fold a copy of the source was fine-tuned on the other folds and scored this one, so every",
        "  film below has a score from a model that never saw its patient. Those scores fit the",
        "  calibration, chose the threshold and give every figure. The adapted model was then",
        "  fine-tuned on all the films.",
        f"- Fine-tuning: `fit_one_cycle({plan['epochs']}, {plan['lr']})`, batch {plan['batch_size']}, "
        f"{plan['augment_level']} augmentation, cross-entropy with class weights, nothing frozen.",
        "",
        "## Figures (every film, cross-fitted)",
        "| model | ROC AUC [95% CI, bootstrap of patients] | threshold | sensitivity | specificity | ECE |",
        "|---|---|---|---|---|---|",
        f"| source (as the worker labels with it) | {_auc(b)} | {b['threshold']:.4f} | "
        f"{_rate(b['sensitivity'])} | {_rate(b['specificity'])} | {b['ece']:.3f} |",
        f"| **adapted** ({cal['method']}-calibrated) | **{_auc(a)}** | {a['threshold']:.4f} | "
        f"{_rate(a['sensitivity'])} | {_rate(a['specificity'])} | "
        f"{a['ece']:.3f} in sample, {cal['ece_cross_fitted']:.3f} cross-fitted |",
        "",
        f"The rule: {rule}, provided the lower bound of specificity there is at least",
        f"{plan['min_specificity']}. Here: threshold {point['threshold']:.4f}, lower bounds "
        f"{point['sensitivity_lower']:.3f} (sensitivity) and {point['specificity_lower']:.3f} (specificity).",
        "The AUC needs no threshold; the rates are of the films that chose the threshold. The adapted",
        f"model, trained on all {s['films']} films rather than {plan['folds'] - 1}/{plan['folds']} of them, "
        "may do a little better.",
        "",
        "## Gate",
        f"- Cross-fitted: each fold's model's gate, fitted on its training films, refuses "
        f"{facts['gate']['cross_fitted_refused']:.1%} of the films it did not train on "
        f"(limit set to refuse {plan['refuse_share']:.0%}).",
    ]
    if facts["deployable"]:
        lines += [
            f"- The adapted model's gate: its own class means and covariance on all films (layers "
            f"{', '.join(m['gate']['layers'])}), the folds' median scales and limit "
            f"({m['gate']['limit']:.3f}).",
            "",
            "## File",
            f"`export.pkl`, SHA-256 `{m['sha256']}`; pin it in `[model] sha256`. "
            f"Adaptation took {facts['seconds']:.0f} s.",
        ]
    else:
        lines += ["", f"Adaptation took {facts['seconds']:.0f} s."]
    if facts["unreadable"]:
        lines.append(f"\n{len(facts['unreadable'])} films of the sample could not be read (metrics.json).")
    path.write_text("\n".join(lines) + "\n")


def _rule_name(point: dict[str, Any]) -> str:
    if point.get("reached", True):
        return f"{point['rule']} rule"
    return f"the point rule's threshold: the {point['rule']} rule reaches none here"


def adapt_summary(facts: dict[str, Any]) -> list[str]:
    """The lines ``xray-train adapt`` prints."""
    b, a, point = facts["before"], facts["cross_fitted"], facts["operating_point"]
    lines = [
        f"every film, cross-fitted: AUC {_auc(b)} before, {_auc(a)} adapted",
        f"operating point {point['threshold']:.4f} ({facts['calibration']['method']}-calibrated, "
        f"{_rule_name(point)}): sensitivity {point['sensitivity']:.3f} "
        f"(lower bound {point['sensitivity_lower']:.3f}), "
        f"specificity {point['specificity']:.3f} (lower bound {point['specificity_lower']:.3f}); "
        f"ECE {facts['calibration']['ece_cross_fitted']:.3f} cross-fitted",
        f"gate: refuses {facts['gate']['cross_fitted_refused']:.1%} of the films its fold did not train on",
    ]
    if facts["deployable"]:
        lines.append(f"wrote {facts['model']['name']} (SHA-256 {facts['model']['sha256']})")
    else:
        lines.append(refusal_line(facts))
    return lines
