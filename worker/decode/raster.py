"""PNG and JPEG through Pillow: orientation, reduced-size JPEG decoding, 8-bit grey."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from worker.decode import pixels
from worker.decode.image import DecodedImage, Limits
from worker.decode.sniff import FileKind
from worker.errors import DecodeError

_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}

# Limits.check replaces Pillow's own bomb guard: it runs on the header's size before any
# pixel is decoded, whatever the configured maximum, and names the size in its reason.
Image.MAX_IMAGE_PIXELS = None


def decode_raster(path: Path, kind: FileKind, limits: Limits, min_side: int | None) -> DecodedImage:
    """Decode a PNG or JPEG to 8-bit grey.

    ``min_side``: for JPEGs, let libjpeg scale by 1/2, 1/4 or 1/8 while decoding (DCT
    scaling), keeping both sides at least this long. Several times faster for large files.
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
            limits.check(width, height)
            if kind is FileKind.JPEG and min_side:
                img.draft("L", (min_side, min_side))
            img.load()
            oriented = ImageOps.exif_transpose(img)
            grey = _to_grey(oriented)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(f"corrupt {kind}: the header cannot be read") from None
    except (OSError, SyntaxError, ValueError, zlib.error, EOFError) as exc:
        raise DecodeError(_describe(kind, exc)) from None
    return DecodedImage(pixels=grey, format=str(kind), width=width, height=height)


def _to_grey(img: Image.Image) -> np.ndarray:
    if img.mode == "L":
        return np.asarray(img)
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        return pixels.scale_uint16(np.asarray(img))
    if img.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    return np.asarray(img.convert("L"))


def _describe(kind: FileKind, exc: BaseException) -> str:
    text = str(exc)
    if "truncated" in text or isinstance(exc, EOFError) or "unexpected end" in text.lower():
        return f"truncated {kind}"
    return f"corrupt {kind}: {text or type(exc).__name__}"
