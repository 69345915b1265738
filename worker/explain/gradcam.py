"""Grad-CAM (Selvaraju et al., 2017): where in a film the model's evidence for the positive
class lies, at the last convolutional block (a fastai resnet's ``layer4``, module ``0.7``).

For each image, the block's activations ``A`` (512 channels x 4 x 4 at 128 px) are weighted
by the spatial mean of the gradient of the positive class's log-odds with respect to them;
the weighted sum over channels, with negative values cut at zero, is the map. It is upsampled
to the item's size and divided by its own maximum, so 1 is the strongest evidence in that
film and 0 none; ``peaks`` keeps the maximum before that division (a film with little
positive evidence anywhere gets a low peak, whatever its normalised map looks like).

Plain torch, no hooks library (docs/heatmaps.md says why). The network is this module's own
BatchNorm-folded, channels_last copy with frozen weights: one forward hook on the block swaps
its output for a detached leaf that requires a gradient, so the backward pass runs through the
head only and computes no weight gradients. The predictor's network and its
``inference_mode`` pass are untouched: maps are a separate pass, for the films that need one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from worker.model.fusion import fold_batchnorm
from worker.model.learner import LoadedModel

LAST_BLOCK = "0.7"  # a fastai vision learner's body is the resnet's children: layer4 is its 8th
# How the gradients weight the activations: Grad-CAM's channel means, or HiResCAM's element-wise
# product (Draelos & Carin, 2020), kept for the comparison in docs/heatmaps.md.
WEIGHTINGS = ("gradcam", "hirescam")


@dataclass(frozen=True)
class Maps:
    """One Grad-CAM map per image (N x H x W, float32 in [0, 1], the item's size), each map's
    maximum before normalising, and the positive class's log-odds the maps explain."""

    maps: np.ndarray
    peaks: np.ndarray
    log_odds: np.ndarray


class GradCam:
    """Grad-CAM maps of one class at one layer of a classifier.

    ``GradCam.of(model)`` builds it for a ``LoadedModel`` (its positive class, layer4);
    ``gradcam(items)`` takes item tensors as ``LoadedModel.to_item`` makes them.
    """

    def __init__(
        self,
        net: nn.Module,
        batch_pipeline: Any,
        target: int,
        *,
        layer: str = LAST_BLOCK,
        device: torch.device | str = "cpu",
        weighting: str = "gradcam",
    ):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}: use one of {', '.join(WEIGHTINGS)}")
        self.weighting = weighting
        self.device = torch.device(device)
        self.batch_pipeline = batch_pipeline
        self.target = target
        self.layer = layer
        folded, _ = fold_batchnorm(net)  # an eval-mode copy: the caller's network is not touched
        for p in folded.parameters():
            p.requires_grad_(False)
        self.net = folded.to(self.device, memory_format=torch.channels_last)
        self._caught: torch.Tensor | None = None
        self.net.get_submodule(layer).register_forward_hook(self._catch)

    @classmethod
    def of(
        cls,
        model: LoadedModel,
        *,
        layer: str = LAST_BLOCK,
        device: torch.device | str = "cpu",
        weighting: str = "gradcam",
    ) -> GradCam:
        net, pipeline, target = model.learner.model, model.batch_pipeline, model.positive_index
        return cls(net, pipeline, target, layer=layer, device=device, weighting=weighting)

    def _catch(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        # Returning a tensor replaces the block's output: the head is computed from a leaf
        # that requires a gradient, and nothing before it builds a graph.
        self._caught = output.detach().requires_grad_(True)
        return self._caught

    def __call__(self, items: Sequence[Any]) -> Maps:
        """Item tensors (uint8, C x H x W, all one size) -> their maps at that size."""
        if not items:
            return Maps(np.zeros((0, 0, 0), np.float32), np.zeros(0, np.float32), np.zeros(0))
        x = self._batch(items)
        try:
            with torch.enable_grad():
                logits = self.net(x).float()
                log_odds = _log_odds(logits, self.target)
                activations = self._caught
                if activations is None:
                    raise RuntimeError(f"layer {self.layer} was not reached by the forward pass")
                # Images are independent in eval mode, so one backward pass of the sum gives
                # each image's own gradients.
                (grads,) = torch.autograd.grad(log_odds.sum(), activations)
        finally:
            self._caught = None
        grads = grads.float()
        weights = grads if self.weighting == "hirescam" else grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activations.detach().float()).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
        peaks = cam.amax(dim=(1, 2))
        maps = cam / torch.where(peaks > 0, peaks, torch.ones_like(peaks))[:, None, None]
        return Maps(
            maps.clamp_(0, 1).cpu().numpy().astype(np.float32),
            peaks.cpu().numpy().astype(np.float32),
            log_odds.detach().double().cpu().numpy(),
        )

    def _batch(self, items: Sequence[Any]) -> torch.Tensor:
        """The learner's batch transforms, where their statistics are, then onto our device."""
        x = items[0].__class__(torch.stack(list(items)))  # keep fastai's tensor type for dispatch
        with torch.no_grad():
            x = self.batch_pipeline(x.to(_pipeline_device(self.batch_pipeline)))
        x = x.as_subclass(torch.Tensor).float()
        return x.to(self.device).contiguous(memory_format=torch.channels_last)


def _log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
    """log P(target) / P(not target) under a softmax: the score a verdict is made of. For two
    classes it is the difference of the logits, so evidence shared by both classes cancels."""
    others = torch.cat([logits[:, :target], logits[:, target + 1 :]], dim=1)
    return logits[:, target] - torch.logsumexp(others, dim=1)


def _pipeline_device(pipeline: Any) -> torch.device:
    """Where a fastai pipeline's tensors (Normalize's mean and std) are: the Predictor moves
    them to its GPU, and a batch must meet them there."""
    for tfm in getattr(pipeline, "fs", ()):
        for name in getattr(tfm, "parameters", ()) or ():
            value = getattr(tfm, name, None)
            if isinstance(value, torch.Tensor):
                return value.device
    return torch.device("cpu")
