"""Broken, odd and hostile image files, as bytes: shared by the decoder tests, the daemon's
hostile-input table and the decoder fuzzer's seeds (bench/fuzz_decoder.py)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from dicom_factory import gradient, make_dicom
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate

# A transfer syntax newer than pydicom 3.0 and every installed plugin (JPEG XL, 2024).
JPEG_XL = "1.2.840.10008.1.2.4.110"
_MPEG2 = "1.2.840.10008.1.2.4.100"  # same length as JPEG_XL, and pydicom can write it


def grey(size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A left-to-right ramp, ``size`` = (width, height)."""
    return Image.fromarray(np.tile(np.linspace(0, 255, size[0], dtype=np.uint8), (size[1], 1)))


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def jpeg_bytes() -> bytes:
    return encode(grey((256, 256)), "JPEG")


def png_bytes() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)
    return encode(Image.fromarray(noise), "PNG")


def png16_bytes() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 100).astype(np.uint16), (50, 1))
    return encode(Image.fromarray(ramp), "PNG")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A decompression bomb's header: a tiny file whose IHDR claims ``width`` x ``height``."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(width + 1) * 64, 9)  # a few rows of zeros: a tiny file, a huge image
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 header claims ``width`` x ``height``."""
    data = bytearray(jpeg_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def dicom_bytes(tmp: Path, pixels: np.ndarray | None = None, **kwargs) -> bytes:
    """A DICOM built by ``make_dicom`` (a gradient image unless ``pixels`` is None and
    ``sop_class`` says otherwise), as bytes; ``tmp`` is a scratch folder."""
    path = make_dicom(tmp / "scratch.dcm", pixels, **kwargs)
    data = path.read_bytes()
    path.unlink()
    return data


def dicom_with_syntax(tmp: Path, syntax: str, fragment: bytes = b"\xff\x0a" + bytes(64)) -> bytes:
    """A single-frame DICOM claiming ``syntax``, with ``fragment`` as its encapsulated pixel data.

    pydicom refuses to write JPEG XL, so that one is written as MPEG-2 (same UID length) and
    the UID replaced in the bytes.
    """
    path = make_dicom(tmp / "scratch.dcm", gradient())
    ds = dcmread(path)
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = _MPEG2 if syntax == JPEG_XL else syntax
    ds.save_as(path, implicit_vr=False, little_endian=True)
    data = path.read_bytes()
    path.unlink()
    if syntax == JPEG_XL:
        assert data.count(_MPEG2.encode()) == 1
        data = data.replace(_MPEG2.encode(), JPEG_XL.encode())
    return data


def rle_overrun(tmp: Path) -> bytes:
    """An RLE Lossless DICOM (64 x 48, 16-bit) whose two segments decode to 3,200 bytes each
    instead of 3,072: pylibjpeg-rle panicked (a Rust PanicException) on it."""
    segment = b"\x81\x10" * 25  # 25 replicate runs of 128 bytes
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    return dicom_with_syntax(tmp, "1.2.840.10008.1.2.5", fragment=header + segment + segment)


def edit_element(
    data: bytes, group: int, element: int, *, vr: bytes | None = None, value: bytes | None = None
) -> bytes:
    """Rewrite the VR and/or value of the first (group, element) in an explicit-VR little-endian
    DICOM with a 2-byte length (US, UL, DS, UI, ...); the length follows the new value."""
    at = data.index(struct.pack("<HH", group, element))
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    new_vr = data[at + 4 : at + 6] if vr is None else vr
    new_value = data[at + 8 : at + 8 + length] if value is None else value
    return data[: at + 4] + new_vr + struct.pack("<H", len(new_value)) + new_value + data[at + 8 + length :]


def flip_byte(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1 :]


__all__ = [
    "JPEG_XL",
    "dicom_bytes",
    "dicom_with_syntax",
    "edit_element",
    "encode",
    "flip_byte",
    "grey",
    "jpeg_bytes",
    "jpeg_claiming",
    "png16_bytes",
    "png_bytes",
    "png_claiming",
    "rle_overrun",
]
