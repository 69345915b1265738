"""``xray-train fit`` end to end: train, evaluate through the worker, export, report."""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from training import plots
from training.card import write_model_card
from training.data import class_root
from training.evaluation import evaluate_files, pick_threshold, write_report
from training.recipe import Recipe, build_learner, fit, strip_training_transforms
from training.split import patient_id
from worker.model.learner import file_sha256, load_model


def versions() -> dict[str, str]:
    import fastai
    import pydicom
    import torch
    import torchvision

    import worker

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "fastai": fastai.__version__,
        "pydicom": pydicom.__version__,
        "xray-screen": worker.__version__,
    }


def run_fit(
    data_dir: Path,
    out_dir: Path,
    recipe: Recipe,
    *,
    name: str = "pneumonia-resnet18",
    positive_class: str = "",
    target_sensitivity: float = 0.95,
    progress: bool = True,
    echo=print,
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    learn = build_learner(data_dir, recipe)
    dls = learn.dls
    if recipe.weights is None:
        echo(
            "training from scratch: no pretrained weights "
            "(pass --weights FILE to start from a resnet18 state dict)"
        )
    train_items, valid_items = list(dls.train_ds.items), list(dls.valid_ds.items)
    echo(f"{len(train_items)} training and {len(valid_items)} validation images, classes {list(dls.vocab)}")

    dls.show_batch(max_n=9, figsize=(7, 7))
    plots.save_current(out_dir / "show_batch.png")
    if not progress:
        learn.logger = _epoch_line(learn, recipe.epochs, echo)
    start = time.perf_counter()
    fit(learn, recipe, progress=progress)
    seconds = time.perf_counter() - start
    history = [
        {"epoch": i + 1, "train_loss": float(v[0]), "valid_loss": float(v[1]), "error_rate": float(v[2])}
        for i, v in enumerate(learn.recorder.values)
    ]
    plots.loss_plot(out_dir / "loss_curve.png", history)
    _fastai_figures(learn, out_dir)

    strip_training_transforms(learn)  # the worker never imports training: keep it out of the pickle
    with tempfile.TemporaryDirectory() as tmp:  # evaluate the exported learner, as the worker loads it
        draft = Path(tmp) / "export.pkl"
        learn.export(draft)
        model = load_model(draft, trust=True, positive_class=positive_class)
        ev = evaluate_files(
            model, [(Path(p), dls.vocab[int(y)]) for p, (_, y) in zip(valid_items, dls.valid_ds, strict=True)]
        )
    thresholds = pick_threshold(ev, target_sensitivity)
    threshold = thresholds["at_target_sensitivity"]
    metadata = {
        "name": name,
        "version": dt.date.today().isoformat(),
        "classes": model.vocab,
        "positive_class": model.positive_class,
        "threshold": threshold,
        "target_sensitivity": target_sensitivity,
        "preprocessing": model.preprocessing.version,
    }
    learn.xray_metadata = metadata
    learn.export((out_dir / "export.pkl").resolve())
    metadata["sha256"] = file_sha256(out_dir / "export.pkl")

    counts = Counter(Path(p).parent.name for p in train_items + valid_items)
    facts = {
        "model": metadata,
        "recipe": recipe.as_dict(),
        "data": {
            "source": str(class_root(data_dir, "train")),
            "total": len(train_items) + len(valid_items),
            "counts": dict(sorted(counts.items())),
            "train": len(train_items),
            "valid": len(valid_items),
            "valid_counts": dict(sorted(Counter(Path(p).parent.name for p in valid_items).items())),
            "valid_patients": len({patient_id(p) for p in valid_items}),
        },
        "thresholds": thresholds,
        "history": history,
        "training_seconds": seconds,
        "device": str(learn.dls.device),
        "command": sys.argv,
        "versions": versions(),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    facts["validation"] = write_report(ev, out_dir / "validation", threshold, "Validation split", {})
    (out_dir / "metrics.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")
    write_model_card(out_dir / "MODEL_CARD.md", facts)
    return facts


def _epoch_line(learn, epochs: int, echo):
    """fastai's per-epoch log as one readable line (for logs and CI, where bars are noise)."""

    def log(values: list) -> None:
        names = learn.recorder.metric_names
        if not values or not isinstance(values[0], int):
            return
        parts = [f"epoch {values[0] + 1}/{epochs}"]
        for name, value in zip(names[1:], values[1:], strict=False):
            parts.append(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}")
        echo("  ".join(parts))

    return log


def _fastai_figures(learn, out_dir: Path) -> None:
    """The seed's own inspection: confusion matrix and top losses from fastai."""
    from fastai.interpret import ClassificationInterpretation

    with learn.no_bar():
        interp = ClassificationInterpretation.from_learner(learn)
        interp.plot_confusion_matrix(figsize=(4, 4))
        plots.save_current(out_dir / "confusion_matrix.png")
        interp.plot_top_losses(5, nrows=1, figsize=(22, 5))
        plots.save_current(out_dir / "top_losses.png")
