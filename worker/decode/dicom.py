"""DICOM through pydicom and the pylibjpeg plugins, rendered as the standard says."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    RLELossless,
)

from worker.decode import pixels
from worker.decode.image import DecodedImage, DicomFacts, Limits
from worker.decode.jpeg import fix_sequential_scan_end
from worker.errors import DecodeError
from worker.malformed import MALFORMED

log = logging.getLogger(__name__)

_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


def decode_dicom(path: Path, limits: Limits) -> DecodedImage:
    """Decode a single-frame DICOM image to 8-bit grey (0 = black)."""
    ds = read_dataset(path)
    try:
        return _decode(ds, path, limits)
    except MALFORMED as exc:
        raise DecodeError(f"corrupt DICOM: {_message(exc)}") from None


def _decode(ds: Dataset, path: Path, limits: Limits) -> DecodedImage:
    _require_single_image(ds, path)
    width, height = int(ds.Columns), int(ds.Rows)
    limits.check(width, height)
    stored = _pixel_array(ds, path)
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
    except (*MALFORMED, OSError) as exc:
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
    if not ds.PixelData:  # a zero-length element reads as None
        raise DecodeError("DICOM has no pixel data (Pixel Data is empty): not an image")
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


class _NoPluginTracebacks(logging.Filter):
    """pydicom and pylibjpeg log each failing plugin's full traceback at ERROR
    (``LOGGER.exception``): many journald lines per bad file, that look like our own crash.
    The reason is in the RuntimeError raised next, which ``_pixel_array`` logs as one WARNING
    line and turns into the file's DecodeError."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.exc_info)


_QUIET = _NoPluginTracebacks()
logging.getLogger("pydicom.pixels.decoders.base").addFilter(_QUIET)
logging.getLogger("pylibjpeg.utils").addFilter(_QUIET)


def _pixel_array(ds: Dataset, path: Path) -> np.ndarray:
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        ds.pixel_array_options(decoding_plugin=_PLUGIN.get(syntax, ""))
        try:
            return ds.pixel_array
        except RuntimeError:
            if syntax != JPEGExtended12Bit or not _repair_scan_header(ds):
                raise
            return ds.pixel_array
    except NotImplementedError as exc:  # pydicom has no decoder at all for this syntax
        if "data type" in str(exc):  # e.g. BitsAllocated 48: nothing to do with the syntax
            raise DecodeError(f"corrupt DICOM pixel data ({syntax.name}): {exc}") from None
        raise DecodeError(f"DICOM transfer syntax {_name(syntax)} cannot be decoded here") from None
    except RuntimeError as exc:
        if "missing dependencies" in str(exc):  # a decoder exists but its plugin is not installed
            raise DecodeError(f"DICOM transfer syntax {_name(syntax)} cannot be decoded here") from None
        # Every installed plugin tried and failed: the data is bad, not the syntax.
        reason = _plugin_error(exc)
        log.warning("%s: no plugin could decode its %s pixel data: %s", path.name, syntax.name, reason)
        raise DecodeError(f"corrupt DICOM pixel data ({syntax.name}): {reason}") from None
    except (ValueError, KeyError, TypeError, AttributeError, EOFError, OSError, IndexError) as exc:
        if "less than expected" in str(exc):
            raise DecodeError(f"truncated DICOM: {exc}") from None
        raise DecodeError(f"corrupt DICOM pixel data ({syntax.name}): {exc or type(exc).__name__}") from None


def _repair_scan_header(ds: Dataset) -> bool:
    """Replace a JPEG frame whose sequential scan says Se = 0 by one that says 63, as IJG and
    dcmtk read it (see ``fix_sequential_scan_end``). False when there is nothing to repair."""
    frame = next(generate_frames(ds.PixelData, number_of_frames=1), b"")
    repaired = fix_sequential_scan_end(frame)
    if repaired is None:
        return False
    log.debug("JPEG scan header says Se = 0, not 63: decoding it as 63, as IJG does")
    ds.PixelData = encapsulate([repaired])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return True


def _name(syntax: pydicom.uid.UID) -> str:
    # The UID first, whether pydicom knows its name or not: importing pynetdicom adds names
    # (JPEG XL, ...) to pydicom's dictionary, and a reason must not depend on that.
    return f"{syntax} ({syntax.name})" if syntax.name != str(syntax) else f"{syntax} (unknown to pydicom)"


def _plugin_error(exc: RuntimeError) -> str:
    """The first plugin's complaint from pydicom's "raised by all available plugins" message,
    without object addresses, so that one kind of failure always has one reason."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    return _ADDRESS.sub("", lines[0]) if lines else str(exc) or type(exc).__name__


_ADDRESS = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")


def render_grey(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values to displayed grey in [0, 1]: modality LUT, VOI, presentation LUT shape."""
    values = apply_modality_lut(stored, ds)
    unit = voi(values, ds)
    return pixels.invert(unit) if inverse_shape(ds) else unit


def inverse_shape(ds: Dataset) -> bool:
    """Whether the VOI output is inverted for display.

    Presentation LUT Shape (2050,0020) says it when present: INVERSE inverts once, whatever the
    photometric interpretation (PS3.3's DX Image Module pairs INVERSE with MONOCHROME1: one
    inversion, not two), and IDENTITY does not invert. Without it (or with LIN OD, a printer's
    curve), MONOCHROME1 is inverted. dcmtk renders all four pairs this way.
    """
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    if shape in ("IDENTITY", "INVERSE"):
        return shape == "INVERSE"
    return str(ds.PhotometricInterpretation).strip() == "MONOCHROME1"


def voi(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """VOI LUT sequence if present, else the first window, else the image's full range."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        return pixels.rescale_range(apply_voi(values, ds), 0, 2**bits - 1)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        return pixels.window(values, center, width, function, step=modality_step(ds))
    return pixels.full_range(values)


def modality_step(ds: Dataset) -> float:
    """The difference between neighbouring modality values: the rescale slope when it is a
    fraction (e.g. 5e-6), else 1. LINEAR windows count half-steps and one-step widths in it."""
    if "ModalityLUTSequence" in ds or "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return 1.0
    slope = abs(_first(ds.get("RescaleSlope")) or 1.0)
    return slope if slope < 1.0 else 1.0


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
