"""Catching the image gate's features during a torch forward pass.

A layer is named by its module path in the learner's network, and optionally how to
summarise its map (``worker.model.gate.summary_of``). A bundle's ONNX graph computes the
same summaries as outputs (``training/bundle.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from worker.model.gate import PENULTIMATE, summary_of


def split_head(net: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(trunk, classifier)`` of a fastai vision learner's model: everything up to the
    penultimate features, and the final linear layer; None for any other structure."""
    if not (isinstance(net, nn.Sequential) and len(net) == 2 and isinstance(net[1], nn.Sequential)):
        return None
    head = net[1]
    if not isinstance(head[-1], nn.Linear):
        return None
    return nn.Sequential(net[0], head[:-1]), head[-1]


class FeatureTap:
    """Catches the features of named submodules during a forward pass. A layer is named by its
    module path, and optionally how to summarise its map, after a colon:

    - ``"0.6"`` (a fastai resnet's layer3): the mean and standard deviation of each channel;
    - ``"0.4:grid3"`` (layer1): each channel's mean over a 3 x 3 grid of the image, which
      keeps where things are (the layout of a film), not only how much of them there is.
    """

    def __init__(
        self, net: nn.Module, layers: Sequence[str], summary: Callable[[torch.Tensor, str], Any] | None = None
    ):
        # ``summary``: how a caught map becomes the layer's features; by default ``summarise``
        # (numpy, for the gate); the ONNX export passes one that stays in the traced graph.
        self.summary = summary or summarise
        self.caught: dict[str, Any] = {}
        for name in layers:
            if name != PENULTIMATE:
                module, _, how = name.partition(":")
                summary_of(how)  # an unknown summary fails here, not in the first batch
                net.get_submodule(module).register_forward_hook(self._hook(name, how))

    def _hook(self, name: str, how: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self.caught[name] = self.summary(output, how)

        return hook

    def take(self) -> dict[str, Any]:
        caught, self.caught = self.caught, {}
        return caught


def summarise(output: torch.Tensor, how: str = "") -> np.ndarray:
    """A layer's output as one vector per image."""
    o = output.detach().float()
    if o.dim() == 4:
        grid = summary_of(how)
        if grid:
            o = torch.nn.functional.adaptive_avg_pool2d(o, grid)
        else:
            o = torch.cat([o.mean(dim=(2, 3)), o.std(dim=(2, 3))], dim=1)
    return o.reshape(len(o), -1).cpu().numpy()
