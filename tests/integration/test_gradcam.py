"""Grad-CAM (worker/explain/gradcam.py) on a tiny network whose evidence is known: where the
map is hot, what it leaves alone (torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from worker.explain.gradcam import GradCam


def tiny_net(sign: float = 1.0) -> nn.Module:
    """fastai's shape, (body, head): a 4x4-pooling 'block' named "0.0", then average pooling and
    a linear layer whose class 1 is the block's single channel (times ``sign``)."""
    body = nn.Sequential(nn.AvgPool2d(4))  # 16 x 16 -> 4 x 4, the block Grad-CAM looks at
    linear = nn.Linear(1, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.0], [sign]]))
        linear.bias.zero_()
    return nn.Sequential(body, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear))


def item_with_square(top: int, left: int) -> torch.Tensor:
    x = torch.zeros(1, 16, 16, dtype=torch.uint8)
    x[0, top : top + 4, left : left + 4] = 200
    return x


def as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255


def test_the_map_is_where_the_positive_evidence_is_at_the_item_size():
    gradcam = GradCam(tiny_net(), as_float, target=1, layer="0.0")
    maps = gradcam([item_with_square(0, 0), item_with_square(12, 8)])
    assert maps.maps.shape == (2, 16, 16)
    assert maps.maps.dtype == np.float32
    assert maps.maps.min() >= 0 and maps.maps.max() == pytest.approx(1.0)
    first, second = maps.maps
    assert np.unravel_index(first.argmax(), first.shape)[0] < 4
    assert first[:4, :4].mean() > 5 * first[8:, 8:].mean()
    assert second[12:, 8:12].mean() > 5 * second[:4, :4].mean()
    assert np.all(maps.peaks > 0) and np.all(maps.log_odds > 0)


def test_evidence_against_the_positive_class_gives_an_empty_map():
    """Grad-CAM keeps positive evidence only: a network for which the square argues for the
    other class has nothing to show (peak 0), not a map of the square."""
    maps = GradCam(tiny_net(sign=-1.0), as_float, target=1, layer="0.0")([item_with_square(0, 0)])
    assert maps.peaks[0] == 0 and not maps.maps.any()


def test_gradcam_leaves_the_callers_network_alone_and_is_repeatable():
    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    gradcam = GradCam(net, as_float, target=1, layer="0.0")
    items = [item_with_square(4, 4)]
    assert np.array_equal(gradcam(items).maps, gradcam(items).maps)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.requires_grad for p in net.parameters())
    assert gradcam(items).maps.shape == (1, 16, 16)


def test_an_unknown_weighting_is_refused():
    with pytest.raises(ValueError, match="weighting"):
        GradCam(tiny_net(), as_float, target=1, layer="0.0", weighting="guess")
