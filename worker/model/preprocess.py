"""What the model does to a decoded film before the network, with numpy and Pillow only.

``Preprocessing`` is read from the learner (``worker/model/learner.py``) when a model is
exported, and stored in the bundle's sidecar (``worker/model/bundle.py``). ``prepare_array``
rebuilds fastai's validation-time item and batch transforms from it, so that a bundle screens
without fastai or torch:

- ``Resize(size, method)``: ``squish`` resizes the whole film, ``crop`` takes the centred
  largest crop of the target's aspect ratio first; both with Pillow's bilinear filter, as
  fastai's ``crop_pad`` does;
- ``ToTensor`` + ``IntToFloatTensor``: channels first, divided by 255;
- ``Normalize``: ``(x - mean) / std`` per channel.

tests/integration/test_bundle.py checks it against fastai's ``get_preds`` on real files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from worker.decode import DecodedImage

# Bump when decode_file's output pixels change for the same input file.
# 2: baseline-JPEG DICOMs decoded by Pillow (libjpeg-turbo), within one grey level of v1.
# 3: Presentation LUT Shape decides the inversion; LINEAR windows in fractional rescale units
#    (up to one grey level); JPEG extended 12-bit scans with Se = 0 decoded (were refused).
DECODE_VERSION = 3

RESIZE_METHODS = ("squish", "crop")


@dataclass(frozen=True)
class Preprocessing:
    """What the learner does to a decoded image, read from the learner itself."""

    image_mode: str  # "L" (one channel) or "RGB"
    min_side: int  # JPEG draft decoding keeps both sides at least this long
    resize: tuple[int, int] | None  # (height, width)
    resize_method: str | None
    normalize: tuple[list[float], list[float]] | None  # (mean, std) per channel

    @property
    def version(self) -> str:
        """A short, stable description recorded with every result."""
        parts = [f"decode-v{DECODE_VERSION}", self.image_mode, f"draft>={self.min_side}"]
        if self.resize:
            parts.append(f"resize-{self.resize_method}-{self.resize[0]}x{self.resize[1]}")
        if self.normalize:
            mean, std = self.normalize
            parts.append("norm-" + ",".join(f"{m:.4f}/{s:.4f}" for m, s in zip(mean, std, strict=True)))
        return ";".join(parts)

    @property
    def channels(self) -> int:
        return 1 if self.image_mode == "L" else 3

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "decode_version": DECODE_VERSION}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessing:
        normalize = data.get("normalize")
        resize = data.get("resize")
        return cls(
            image_mode=str(data["image_mode"]),
            min_side=int(data["min_side"]),
            resize=(int(resize[0]), int(resize[1])) if resize else None,
            resize_method=data.get("resize_method"),
            normalize=([float(v) for v in normalize[0]], [float(v) for v in normalize[1]])
            if normalize
            else None,
        )


def resize_image(img: Image.Image, size: tuple[int, int], method: str) -> Image.Image:
    """fastai's validation-time ``Resize(size, method)`` on a PIL image; ``size`` is (h, w)."""
    height, width = size
    if method == "crop":
        w, h = img.size
        m = min(w / width, h / height)  # the largest crop of the target's aspect ratio
        cw, ch = int(m * width), int(m * height)
        left, top = int(0.5 * (w - cw)), int(0.5 * (h - ch))
        img = img.crop((left, top, left + cw, top + ch))
    elif method != "squish":
        raise ValueError(f"resize method {method!r} is not one of {RESIZE_METHODS}")
    return img.resize((width, height), Image.BILINEAR)


def item_array(pre: Preprocessing, decoded: DecodedImage) -> np.ndarray:
    """Decoded pixels -> the model's item: uint8, channels x height x width, resized."""
    img = Image.fromarray(decoded.pixels)
    if pre.image_mode != "L":
        img = img.convert(pre.image_mode)
    if pre.resize:
        img = resize_image(img, pre.resize, pre.resize_method or "squish")
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def batch_array(pre: Preprocessing, items: list[np.ndarray]) -> np.ndarray:
    """Items -> the network's input: float32, N x C x H x W, scaled and normalised."""
    x = np.stack(items).astype(np.float32)
    x /= np.float32(255)  # as IntToFloatTensor: a division, not a product
    if pre.normalize:
        mean, std = (np.asarray(v, dtype=np.float32).reshape(1, -1, 1, 1) for v in pre.normalize)
        x -= mean
        x /= std
    return x
