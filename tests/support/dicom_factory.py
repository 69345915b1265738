"""Build small DICOM files with pydicom: for the decoder's reference table, and DICOM twins of
real films for the PACS tests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def gradient(rows: int = 64, cols: int = 48, bits: int = 12) -> np.ndarray:
    """A smooth test image using the whole ``bits`` range."""
    y, x = np.mgrid[0:rows, 0:cols]
    img = (x / (cols - 1) * 0.7 + y / (rows - 1) * 0.3) * (2**bits - 1)
    return np.rint(img).astype(np.uint16)


def make_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    frames: int = 1,
    sop_class: str = CR_IMAGE_STORAGE,
    syntax: str = ExplicitVRLittleEndian,
    file_meta: bool = True,
    attributes: Mapping[str, object] | None = None,
) -> Path:
    """A DICOM file of ``pixels``; ``attributes`` (keyword -> value) set over the defaults."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientID = "TEST-ONLY"
    for keyword, value in (attributes or {}).items():
        setattr(ds, keyword, value)
    if pixels is not None:
        rows, cols = pixels.shape[-2:]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16 if pixels.dtype.itemsize == 2 else 8
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        if frames > 1:
            ds.NumberOfFrames = frames
            pixels = np.stack([pixels] * frames)
        ds.PixelData = pixels.tobytes()
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function:
        ds.VOILUTFunction = voi_function
    implicit = syntax == ImplicitVRLittleEndian
    if file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if syntax == RLELossless else syntax
        if syntax == RLELossless:
            ds.compress(RLELossless, encoding_plugin="pydicom")
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    return path


def dicom_twin(jpeg: Path, path: Path, *, max_side: int = 512, **attributes: object) -> Path:
    """The DICOM twin of a real film (a JPEG of ../shared/data): its grey pixels, at most
    ``max_side`` on a side, as an 8-bit MONOCHROME2 CR image with ``attributes`` (keyword ->
    value: Modality, the UIDs, StudyDate...)."""
    with Image.open(jpeg) as image:
        grey = image.convert("L")
        grey.thumbnail((max_side, max_side))
        pixels = np.asarray(grey, dtype=np.uint8)
    return make_dicom(path, pixels, bits_stored=8, attributes=attributes)


__all__ = ["BASIC_TEXT_SR", "CR_IMAGE_STORAGE", "CTImageStorage", "dicom_twin", "gradient", "make_dicom"]
