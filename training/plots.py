"""Figures for a training or evaluation run (matplotlib, written straight to files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from training.metrics import roc_curve


def save_current(path: Path) -> None:
    plt.gcf().savefig(path, dpi=110, bbox_inches="tight")
    plt.close("all")


def roc_plot(
    path: Path, y_true: np.ndarray, p_pos: np.ndarray, auc: float, threshold: float, title: str
) -> None:
    fpr, tpr, thresholds = roc_curve(y_true, p_pos)
    _, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"ROC, AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    at = int(np.argmin(np.abs(thresholds - threshold)))
    ax.plot(fpr[at], tpr[at], "o", color="crimson", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    save_current(path)


def confusion_plot(path: Path, matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> None:
    _, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(matrix, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=14)
    ax.set_xticks([0, 1], classes)
    ax.set_yticks([0, 1], classes)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    save_current(path)


def top_losses_plot(path: Path, images: Sequence[np.ndarray], captions: Sequence[str]) -> None:
    n = max(len(images), 1)
    _, axes = plt.subplots(1, n, figsize=(3 * n, 3.4), squeeze=False)
    for ax, img, caption in zip(axes[0], images, captions, strict=False):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(caption, fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    save_current(path)


def loss_plot(path: Path, history: Sequence[dict]) -> None:
    epochs = [h["epoch"] for h in history]
    _, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax.plot(epochs, [h["valid_loss"] for h in history], "o-", label="validation loss")
    ax.set(xlabel="epoch", ylabel="loss", title="Loss per epoch")
    ax.legend()
    save_current(path)


def reliability_plot(path: Path, bins: Sequence[dict], ece: float, title: str) -> None:
    """Observed rate against mean predicted probability per bin, with each bin's film count."""
    _, (ax, hist) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = [b for b in bins if b["n"]]
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.plot(
        [b["mean_p"] for b in full],
        [b["observed"] for b in full],
        "o-",
        lw=2,
        label=f"model, ECE = {ece:.3f}",
    )
    ax.set(ylabel="observed fraction positive", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper left")
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
    hist.bar([b["lo"] for b in bins], [b["n"] for b in bins], width=width, align="edge", color="steelblue")
    hist.set(xlabel="predicted probability (positive)", ylabel="films")
    save_current(path)
