"""The bundle's numpy preprocessing (worker/model/preprocess.py) against fastai's own transforms,
pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastai.data.transforms import IntToFloatTensor, Normalize
from fastai.torch_core import TensorImageBW
from fastai.vision.augment import Resize
from fastai.vision.core import PILImageBW
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.decode import DecodedImage
from worker.model.preprocess import Preprocessing, batch_array, item_array


def _pre(method: str, size: tuple[int, int] = (128, 128)) -> Preprocessing:
    return Preprocessing("L", 256, size, method, ([0.5046], [0.2384]))


def _decoded(pixels: np.ndarray) -> DecodedImage:
    return DecodedImage(pixels, "PNG", pixels.shape[1], pixels.shape[0])


def _fastai_item(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    height, width = pre.resize
    resize = Resize((height, width), method=pre.resize_method)
    out = resize(PILImageBW.create(pixels), split_idx=1)  # validation: centred crops
    return np.asarray(out)[None]


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(40, 700),
    height=st.integers(40, 700),
    method=st.sampled_from(["squish", "crop"]),
    seed=st.integers(0, 2**16),
)
def test_items_equal_fastai_resize(width: int, height: int, method: str, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    pre = _pre(method)
    assert np.array_equal(item_array(pre, _decoded(pixels)), _fastai_item(pixels, pre))


@pytest.mark.parametrize("size", [(128, 128), (96, 160)])
def test_batch_equals_fastai_batch_transforms(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    pre = _pre("squish", size)
    items = [item_array(pre, _decoded(rng.integers(0, 256, (300, 250), dtype=np.uint8))) for _ in range(3)]
    mean, std = pre.normalize
    norm = Normalize.from_stats(mean, std, cuda=False)
    x = IntToFloatTensor()(TensorImageBW(torch.from_numpy(np.stack(items))))
    theirs = norm(x).numpy()
    ours = batch_array(pre, items)
    assert ours.dtype == np.float32 and ours.shape == (3, 1, *size)
    assert np.abs(ours - theirs).max() < 1e-6
