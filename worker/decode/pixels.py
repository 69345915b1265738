"""Pure pixel maths: arrays in, arrays out, no I/O.

The DICOM display pipeline in the order PS3.3 C.11 defines: modality LUT (rescale),
then VOI (VOI LUT or window), then MONOCHROME1 inversion, then scaling to 8 bits.
Everything in between works on floats in [0, 1].
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from worker.errors import DecodeError

VoiFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]

# ITU-R BT.601 luma weights, the same Pillow uses for RGB -> L.
_LUMA = np.array([0.299, 0.587, 0.114])


def window(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR", step: float = 1.0
) -> np.ndarray:
    """Map modality values through a VOI window to [0, 1] (PS3.3 C.11.2.1.2).

    LINEAR's half-step and "width - 1" are written for integer values. ``step`` is the
    spacing of the modality values: 1 for integers, the rescale slope when it is a fraction.
    With slope 5e-6 a window 0.02 wide spans 4,000 stored values; read with a step of 1 it
    was a threshold, and the image came out blank. The result is the window applied to the
    stored values, which is how dcmtk renders such a window given in stored units.
    """
    x = values.astype(np.float64, copy=False)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    half = step / 2
    if width <= step:  # a one-value window is a threshold
        return (x > center - half).astype(np.float64)
    return np.clip((x - (center - half)) / (width - step) + 0.5, 0.0, 1.0)


def rescale_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly to [0, 1], clipping outside values."""
    if high <= low:
        raise DecodeError(f"image is blank: every pixel is {low:g}")
    x = values.astype(np.float64, copy=False)
    return np.clip((x - low) / (high - low), 0.0, 1.0)


def full_range(values: np.ndarray) -> np.ndarray:
    """Use the image's own minimum and maximum as the window (no VOI in the file)."""
    return rescale_range(values, float(values.min()), float(values.max()))


def invert(unit: np.ndarray) -> np.ndarray:
    """MONOCHROME1: the minimum value is white."""
    return 1.0 - unit


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats to 8-bit grey levels, rounding to the nearest level."""
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Colour (H, W, 3) to grey with BT.601 weights, keeping the value range."""
    return rgb[..., :3].astype(np.float64) @ _LUMA


def scale_uint16(values: np.ndarray) -> np.ndarray:
    """A 16-bit PNG's full range (0-65535) to 8 bits."""
    return to_uint8(values.astype(np.float64) / 65535.0)
