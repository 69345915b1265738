"""One way to turn any chest X-ray file into 8-bit grey pixels, for training and screening.

``decode_file`` decides the type by content (magic bytes), never by name, and raises
``DecodeError`` (permanent: the file is bad) with a reason a person understands, or
``ReadError`` (transient: the file could not be read just now).
"""

from __future__ import annotations

import os
from pathlib import Path

from worker.decode.image import DecodedImage, DicomFacts, Limits
from worker.decode.sniff import HEAD_BYTES, FileKind, sniff
from worker.errors import DecodeError, ReadError

__all__ = ["DecodedImage", "DicomFacts", "FileKind", "Limits", "decode_file"]

DEFAULT_LIMITS = Limits()


def decode_file(
    path: str | os.PathLike[str], *, min_side: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> DecodedImage:
    """Decode a PNG, JPEG or DICOM chest X-ray to a 2-D uint8 grey image.

    ``min_side``: the smallest side the caller needs (twice the model's input is plenty);
    large JPEGs are then decoded at a reduced size, which is several times faster.
    """
    path = Path(path)
    kind = sniff(_read_head(path))
    if kind is FileKind.DICOM:
        from worker.decode.dicom import decode_dicom

        decode = lambda: decode_dicom(path, limits)  # noqa: E731
    else:
        from worker.decode.raster import decode_raster

        decode = lambda: decode_raster(path, kind, limits, min_side)  # noqa: E731
    try:
        image = decode()
    except MemoryError:
        raise DecodeError("image too large to decode in memory") from None
    except (FileNotFoundError, PermissionError) as exc:
        raise ReadError(f"cannot read file: {exc.strerror or exc}") from None
    low, high = int(image.pixels.min()), int(image.pixels.max())
    if low == high:  # nothing to screen, whatever the format (DICOMs without a window refuse earlier)
        raise DecodeError(f"image is blank: every pixel is {low}")
    return image


def _read_head(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(HEAD_BYTES)
    except IsADirectoryError:
        raise DecodeError("not a file: it is a directory") from None
    except OSError as exc:
        raise ReadError(f"cannot read file: {exc.strerror or exc}") from None
