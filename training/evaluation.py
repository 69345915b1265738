"""Evaluate a model on labelled files through the worker's own inference path."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training import plots
from training.metrics import summarize, threshold_for_sensitivity, youden_threshold
from worker.answers import Failure, Prediction
from worker.config import InferenceSettings
from worker.model.gate import ImageGate
from worker.model.learner import LoadedModel
from worker.model.predictor import Predictor


@dataclass
class Evaluation:
    classes: list[str]  # [negative, positive]
    predictions: list[Prediction]
    labels: np.ndarray  # 1 = positive class
    failures: list[Failure]

    @property
    def p_pos(self) -> np.ndarray:
        return np.array([p.positive_probability for p in self.predictions])

    def summary(self, threshold: float) -> dict[str, Any]:
        return summarize(self.labels, self.p_pos, threshold)


def evaluate_files(
    model: LoadedModel,
    files: Sequence[tuple[Path, str]],
    settings: InferenceSettings | None = None,
    *,
    calibrate: bool = True,
) -> Evaluation:
    """Predict every (file, label) pair; labels may be class names or 0/1.

    ``calibrate=False``: the model's own probabilities, without a stored site calibration."""
    if len(model.vocab) != 2:
        raise ValueError(f"evaluation supports two-class models; this one has {model.vocab}")
    positive = model.positive_class
    negative = next(c for c in model.vocab if c != positive)
    wanted = {str(path): _as_positive(label, positive, negative) for path, label in files}
    predictions, failures, labels = [], [], []
    predictor = Predictor(model, settings, gate=ScoreOnly(ImageGate.of(model)), calibrate=calibrate)
    for outcome in predictor.predict([p for p, _ in files]):
        if isinstance(outcome, Failure):
            failures.append(outcome)
            continue
        predictions.append(outcome)
        labels.append(wanted[str(outcome.path)])
    return Evaluation([negative, positive], predictions, np.array(labels, dtype=int), failures)


class ScoreOnly:
    """The model's image gate scoring every film (``Prediction.gate_score``) and refusing none:
    an evaluation judges the model on all of its films; ``site-check`` counts refusals apart."""

    def __init__(self, image: ImageGate | None):
        self.image = image

    def before(self, _decoded: Any) -> None:
        return None

    def image_scores(self, features: Any) -> Any:
        return self.image.scores(features) if self.image is not None and features is not None else None

    def after(self, _score: float | None) -> None:
        return None


def _as_positive(label: str, positive: str, negative: str) -> int:
    if label in (positive, "1"):
        return 1
    if label in (negative, "0"):
        return 0
    raise ValueError(f"label {label!r} is neither {positive!r} nor {negative!r} (nor 1/0)")


def pick_threshold(ev: Evaluation, target_sensitivity: float) -> dict[str, float]:
    return {
        "target_sensitivity": target_sensitivity,
        "at_target_sensitivity": threshold_for_sensitivity(ev.labels, ev.p_pos, target_sensitivity),
        "youden": youden_threshold(ev.labels, ev.p_pos),
    }


def write_report(
    ev: Evaluation, out_dir: Path, threshold: float, title: str, extra: dict | None = None
) -> dict:
    """metrics.json, a confusion matrix, a ROC curve and the five worst misses."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = ev.summary(threshold)
    summary["at_0.5"] = ev.summary(0.5) if threshold != 0.5 else None
    summary["failed"] = [{"path": str(f.path), "reason": f.reason} for f in ev.failures]
    summary.update(extra or {})
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    c = summary["confusion"]
    plots.confusion_plot(
        out_dir / "confusion_matrix.png",
        [[c["tn"], c["fp"]], [c["fn"], c["tp"]]],
        ev.classes,
        f"{title} (threshold {threshold:.3f})",
    )
    if 0 < ev.labels.sum() < len(ev.labels):
        plots.roc_plot(out_dir / "roc_curve.png", ev.labels, ev.p_pos, summary["roc_auc"], threshold, title)
    losses = -np.log(np.clip(np.where(ev.labels == 1, ev.p_pos, 1 - ev.p_pos), 1e-12, 1))
    worst = np.argsort(-losses)[:5]
    plots.top_losses_plot(
        out_dir / "top_losses.png",
        [ev.predictions[i].decoded.pixels for i in worst],
        [
            f"{ev.predictions[i].path.name[:28]}\nactual {ev.classes[ev.labels[i]]}, "
            f"p({ev.classes[1]})={ev.p_pos[i]:.3f}"
            for i in worst
        ],
    )
    return summary
