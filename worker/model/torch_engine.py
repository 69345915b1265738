"""The torch runtime: an exported fastai learner's network, for the predictor.

The learner's own batch transforms (``IntToFloatTensor``, ``Normalize``) run on the chosen
device, BatchNorm is folded into the convolutions (``worker/model/fusion.py``), the network
runs channels-last (and in fp16 autocast on a GPU), and the gate's layers are caught on the
way (``FeatureTap``). Used for ``export.pkl`` models (``[inference] runtime = "torch"``);
a bundle runs on ONNX Runtime instead (``worker/model/onnx_engine.py``).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from worker.config import InferenceSettings
from worker.errors import ConfigError
from worker.model.fusion import fold_batchnorm
from worker.model.gate import PENULTIMATE
from worker.model.taps import FeatureTap, split_head

log = logging.getLogger(__name__)


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("[inference] device = cuda, but no CUDA GPU is available (use auto or cpu)")
    return torch.device(requested)


class TorchEngine:
    """Item tensors -> (logits, features by layer): a learner's network on torch."""

    runtime = "torch"

    def __init__(self, model: Any, settings: InferenceSettings, layers: tuple[str, ...] = ()):
        self.model = model
        self.device = resolve_device(settings.device)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        loss_activation = getattr(model.learner.loss_func, "activation", None)
        self._activation = loss_activation or (lambda x: torch.softmax(x, dim=1))
        # channels_last is faster for convolutions on current CPUs and on GPUs alike.
        net, folded = fold_batchnorm(model.learner.model)
        log.debug("folded %d BatchNorm layers into the convolutions before them", folded)
        self.net = net.to(self.device, memory_format=torch.channels_last)
        self._split = split_head(self.net)
        self._tap = FeatureTap(self.net, layers)
        cuda = self.device.type == "cuda"
        if cuda:
            _move_parameters(model.batch_pipeline, self.device)
        self._autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cuda else nullcontext

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.device)}"
        return "cpu"

    def run(self, items: list[Any]) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
        """Item tensors (uint8, C x H x W, all one size) -> logits (N x classes, float32) and
        the features of the tapped layers (None when the network has no fastai head)."""
        x = items[0].__class__(torch.stack(items))  # keep fastai's tensor type for dispatch
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        features = None
        with torch.inference_mode(), self._autocast():
            x = self.model.batch_pipeline(x).contiguous(memory_format=torch.channels_last)
            if self._split is not None:
                trunk, classifier = self._split
                feats = trunk(x)
                logits = classifier(feats).float()
                features = {PENULTIMATE: feats.float().cpu().numpy(), **self._tap.take()}
            else:
                logits = self.net(x).float()
        return logits.cpu().numpy(), features

    def activation(self, logits: np.ndarray) -> np.ndarray:
        """The learner's own activation (softmax for a classifier), in float64."""
        with torch.inference_mode():
            return self._activation(torch.from_numpy(np.asarray(logits, dtype=np.float64))).numpy()


def _move_parameters(pipeline: Any, device: torch.device) -> None:
    """Put transform statistics (Normalize's mean and std) on the model's device."""
    for tfm in pipeline.fs:
        for name in getattr(tfm, "parameters", ()) or ():
            value = getattr(tfm, name, None)
            if isinstance(value, torch.Tensor):
                setattr(tfm, name, value.to(device))
