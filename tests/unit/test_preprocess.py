"""The bundle's numpy preprocessing (worker/model/preprocess.py) on made-up films: channels, its
description, what it refuses. Against fastai's own transforms, pixel for pixel:
tests/integration/test_preprocess_fastai.py."""

from __future__ import annotations

import numpy as np
import pytest

from worker.decode import DecodedImage
from worker.model.preprocess import Preprocessing, batch_array, item_array


def _pre(method: str, size: tuple[int, int] = (128, 128)) -> Preprocessing:
    return Preprocessing("L", 256, size, method, ([0.5046], [0.2384]))


def _decoded(pixels: np.ndarray) -> DecodedImage:
    return DecodedImage(pixels, "PNG", pixels.shape[1], pixels.shape[0])


def test_rgb_models_get_three_channels() -> None:
    pre = Preprocessing("RGB", 256, (64, 64), "squish", ([0.5] * 3, [0.25] * 3))
    item = item_array(pre, _decoded(np.full((80, 90), 7, dtype=np.uint8)))
    assert item.shape == (3, 64, 64) and int(item.max()) == 7
    assert batch_array(pre, [item]).shape == (1, 3, 64, 64)


def test_the_description_survives_json() -> None:
    pre = _pre("crop", (96, 160))
    again = Preprocessing.from_json(pre.to_json())
    assert again == pre and again.version == pre.version


def test_an_unknown_resize_method_is_refused() -> None:
    with pytest.raises(ValueError, match="resize method"):
        item_array(_pre("pad"), _decoded(np.zeros((50, 50), dtype=np.uint8)))
