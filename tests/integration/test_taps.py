"""The image gate's features on torch (worker/model/taps.py): the penultimate layer split off a
fastai-style model, and a layer summarised by channel or on a grid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worker.model.taps import FeatureTap, split_head, summarise


def test_the_penultimate_features_are_split_off_a_fastai_style_model():
    body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1))
    head = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    net = nn.Sequential(body, head).eval()
    split = split_head(net)
    assert split is not None
    trunk, classifier = split
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(classifier(trunk(x)), net(x)) and trunk(x).shape == (3, 6)
    assert split_head(nn.Linear(2, 2)) is None


def test_a_layer_is_summarised_by_channel_mean_and_std_or_on_a_grid():
    out = torch.zeros(2, 3, 6, 6)
    out[0, 1, :2, :2] = 9.0  # one channel lit in the top-left corner of the first image
    plain = summarise(out)
    assert plain.shape == (2, 6) and plain[0, 1] == pytest.approx(1.0) and plain[1].max() == 0
    grid = summarise(out, "grid3").reshape(2, 3, 3, 3)
    assert grid[0, 1, 0, 0] == 9.0 and grid[0, 1].sum() == 9.0  # where it is, not only how much
    assert summarise(out, "grid2").shape == (2, 12)
    with pytest.raises(ValueError, match="unknown layer summary"):
        summarise(out, "max")

    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU())
    with pytest.raises(ValueError, match="unknown layer summary"):
        FeatureTap(net, ["0:grid"])
    tap = FeatureTap(net, ["0", "0:grid2"])
    net(torch.ones(1, 1, 8, 8))
    caught = tap.take()
    assert caught["0"].shape == (1, 6) and caught["0:grid2"].shape == (1, 12)
