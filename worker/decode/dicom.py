"""DICOM through pydicom and the pylibjpeg plugins, rendered as the standard says."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from worker.decode import pixels
from worker.decode.image import DecodedImage, DicomFacts, Limits
from worker.errors import DecodeError

_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


# What pydicom raises when a damaged data element is first used (it parses values lazily):
# bad lengths, unknown VRs, values of the wrong type or multiplicity, broken fragments.
_MALFORMED = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    NotImplementedError,
    OverflowError,
    ZeroDivisionError,
    EOFError,
    struct.error,
    zlib.error,  # Deflated Explicit VR Little Endian
    BytesLengthException,
)


def decode_dicom(path: Path, limits: Limits) -> DecodedImage:
    """Decode a single-frame DICOM image to 8-bit grey (0 = black)."""
    ds = read_dataset(path)
    try:
        return _decode(ds, path, limits)
    except _MALFORMED as exc:
        raise DecodeError(f"corrupt DICOM: {_message(exc)}") from None


def _decode(ds: Dataset, path: Path, limits: Limits) -> DecodedImage:
    _require_single_image(ds, path)
    width, height = int(ds.Columns), int(ds.Rows)
    limits.check(width, height)
    stored = _pixel_array(ds)
    if stored.ndim == 3 and stored.shape[1:] == (height, width):  # more data than NumberOfFrames says
        raise DecodeError(f"multi-frame DICOM ({stored.shape[0]} frames): expected a single radiograph")
    if stored.shape[:2] != (height, width):
        raise DecodeError(f"corrupt DICOM pixel data: {stored.shape} for {height}x{width} pixels")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric in _GREY and stored.ndim == 2:
        unit = render_grey(stored, ds)
    elif photometric in _COLOUR and stored.ndim == 3:
        unit = pixels.full_range(pixels.luma(stored))
    elif photometric in _GREY or photometric in _COLOUR:
        samples = ds.get("SamplesPerPixel")
        raise DecodeError(f"DICOM {photometric} image with {samples} samples per pixel is not supported")
    else:
        raise DecodeError(f"DICOM photometric interpretation {photometric or '(missing)'} is not supported")
    return DecodedImage(
        pixels=pixels.to_uint8(unit), format="DICOM", width=width, height=height, dicom=facts(ds)
    )


def read_dataset(path: Path) -> Dataset:
    """Read a DICOM file, with or without preamble and file meta information."""
    try:
        ds = pydicom.dcmread(path, force=True)
    except InvalidDicomError as exc:
        raise DecodeError(f"not a valid DICOM file: {exc}") from None
    except (*_MALFORMED, OSError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        raise DecodeError(f"corrupt DICOM: {_message(exc)}") from None
    if "TransferSyntaxUID" not in ds.file_meta:
        # No file meta: the data set's own encoding, which pydicom detected, is the syntax.
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def _message(exc: BaseException) -> str:
    """The first line of an exception's message, kept short enough for a log line."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


def _require_single_image(ds: Dataset, path: Path) -> None:
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if _PIXEL_DATA_TAG in path.read_bytes():
            raise DecodeError("truncated DICOM: the pixel data ends early")
        sop = ds.get("SOPClassUID")
        what = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise DecodeError(f"DICOM has no pixel data{what}: not an image")
    if "PixelData" not in ds:
        raise DecodeError("DICOM float pixel data is not a radiograph")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DecodeError(f"multi-frame DICOM ({frames} frames): expected a single radiograph")
    if "Rows" not in ds or "Columns" not in ds:
        raise DecodeError("DICOM pixel data without Rows/Columns")


# Decoders chosen for robustness, found by fuzzing (bench/fuzz_decoder.py): on a baseline
# JPEG stream with one byte changed pylibjpeg's libjpeg allocates without bound (23 GB), and
# pylibjpeg-rle panics on an overlong segment (a PanicException, which is a BaseException
# and so escaped every handler). libjpeg-turbo (Pillow) and pydicom's own RLE decoder refuse
# both with an error.
_PLUGIN = {JPEGBaseline8Bit: "pillow", RLELossless: "pydicom"}


def _pixel_array(ds: Dataset) -> np.ndarray:
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        ds.pixel_array_options(decoding_plugin=_PLUGIN.get(syntax, ""))
        return ds.pixel_array
    except NotImplementedError as exc:  # pydicom has no decoder at all for this syntax
        if "data type" in str(exc):  # e.g. BitsAllocated 48: nothing to do with the syntax
            raise DecodeError(f"corrupt DICOM pixel data ({syntax.name}): {exc}") from None
        raise DecodeError(f"DICOM transfer syntax {_name(syntax)} cannot be decoded here") from None
    except RuntimeError as exc:
        if "missing dependencies" in str(exc):  # a decoder exists but its plugin is not installed
            raise DecodeError(f"DICOM transfer syntax {_name(syntax)} cannot be decoded here") from None
        # Every installed plugin tried and failed: the data is bad, not the syntax.
        raise DecodeError(f"corrupt DICOM pixel data ({syntax.name}): {_plugin_error(exc)}") from None
    except (ValueError, KeyError, TypeError, AttributeError, EOFError, OSError, IndexError) as exc:
        if "less than expected" in str(exc):
            raise DecodeError(f"truncated DICOM: {exc}") from None
        raise DecodeError(f"corrupt DICOM pixel data ({syntax.name}): {exc or type(exc).__name__}") from None


def _name(syntax: pydicom.uid.UID) -> str:
    return syntax.name if syntax.name != str(syntax) else f"{syntax} (unknown to pydicom)"


def _plugin_error(exc: RuntimeError) -> str:
    """The first plugin's complaint from pydicom's "raised by all available plugins" message,
    without object addresses, so that one kind of failure always has one reason."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    return _ADDRESS.sub("", lines[0]) if lines else str(exc) or type(exc).__name__


_ADDRESS = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")


def render_grey(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values to displayed grey in [0, 1]: modality LUT, VOI, MONOCHROME1."""
    values = apply_modality_lut(stored, ds)
    unit = voi(values, ds)
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        unit = pixels.invert(unit)
    return unit


def voi(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """VOI LUT sequence if present, else the first window, else the image's full range."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        return pixels.rescale_range(apply_voi(values, ds), 0, 2**bits - 1)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        return pixels.window(values, center, width, function)
    return pixels.full_range(values)


def _first(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def facts(ds: Dataset) -> DicomFacts:
    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return str(value) if value not in (None, "") else None

    sop_class = ds.get("SOPClassUID")
    return DicomFacts(
        sop_instance_uid=text("SOPInstanceUID"),
        study_instance_uid=text("StudyInstanceUID"),
        series_instance_uid=text("SeriesInstanceUID"),
        sop_class=getattr(sop_class, "name", None) if sop_class else None,
        modality=text("Modality"),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID.name),
        photometric=text("PhotometricInterpretation"),
        accession_number=text("AccessionNumber"),
        patient_id=text("PatientID"),
        body_part=text("BodyPartExamined"),
        view_position=text("ViewPosition"),
    )
