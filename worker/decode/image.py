"""What decoding returns, and the limits it enforces."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.errors import DecodeError


@dataclass(frozen=True)
class Limits:
    """Refuse absurd dimensions before any pixel is decoded."""

    max_pixels: int = 80_000_000
    max_side: int = 20_000
    min_side: int = 32

    def check(self, width: int, height: int) -> None:
        if width > self.max_side or height > self.max_side or width * height > self.max_pixels:
            raise DecodeError(f"image too large: {width}x{height}")
        if width < self.min_side or height < self.min_side:
            raise DecodeError(f"image too small: {width}x{height}")


@dataclass(frozen=True)
class DicomFacts:
    """Identifiers worth recording; patient identifiers are kept apart on purpose."""

    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_class: str | None
    modality: str | None
    transfer_syntax: str | None
    photometric: str | None
    accession_number: str | None = None
    patient_id: str | None = None
    body_part: str | None = None  # BodyPartExamined, e.g. CHEST (the gate reads it)
    view_position: str | None = None  # ViewPosition, e.g. PA, AP, LL


@dataclass(frozen=True)
class DecodedImage:
    """A chest X-ray as 8-bit grey levels, plus the facts about the file it came from.

    ``pixels`` is a 2-D uint8 array, 0 = black. ``width`` and ``height`` are the stored
    image's size; ``pixels`` may be smaller when a JPEG was decoded at reduced size.
    """

    pixels: np.ndarray
    format: str
    width: int
    height: int
    dicom: DicomFacts | None = None
