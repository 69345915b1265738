"""Folding BatchNorm into convolutions changes speed, not results."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

from worker.model.fusion import fold_batchnorm


def _randomise_bn(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.normal_(1, 0.2, generator=gen)
            m.bias.data.normal_(0, 0.2, generator=gen)


def test_folded_resnet_matches_and_has_no_batchnorm2d():
    # fastai's body: the resnet's children in an nn.Sequential, so the stem folds too
    model = nn.Sequential(*resnet18(num_classes=2).children()).eval()[:-2]
    _randomise_bn(model)
    folded, count = fold_batchnorm(model)
    assert count == 20  # stem, 16 in the blocks, 3 downsample paths
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref, out = model(x), folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_unordered_pairs_are_left_alone():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.conv = nn.Conv2d(3, 3, 3)

        def forward(self, x):
            return self.bn(self.conv(x))

    assert fold_batchnorm(Odd())[1] == 0
