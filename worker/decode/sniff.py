"""Decide a file's type from its first bytes, never from its name."""

from __future__ import annotations

from enum import StrEnum

from worker.errors import DecodeError

HEAD_BYTES = 132


class FileKind(StrEnum):
    PNG = "PNG"
    JPEG = "JPEG"
    DICOM = "DICOM"


# Formats we recognise only to name them in the refusal.
_OTHER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
)


def sniff(head: bytes) -> FileKind:
    """Return the kind of image ``head`` (the file's first 132 bytes) starts, or refuse it."""
    if not head:
        raise DecodeError("empty file (0 bytes)")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return FileKind.PNG
    if head.startswith(b"\xff\xd8\xff"):
        return FileKind.JPEG
    if head[128:132] == b"DICM" or _looks_like_bare_dicom(head):
        return FileKind.DICOM
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        raise DecodeError("unsupported image format: WebP (expected PNG, JPEG or DICOM)")
    for signature, name in _OTHER_SIGNATURES:
        if head.startswith(signature):
            raise DecodeError(f"unsupported file format: {name} (expected PNG, JPEG or DICOM)")
    if _looks_like_text(head):
        raise DecodeError("not an image: the file is text (expected PNG, JPEG or DICOM)")
    raise DecodeError("not an image: unknown file format (expected PNG, JPEG or DICOM)")


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A DICOM data set without the 128-byte preamble and 'DICM' prefix.

    Such files start directly with a little-endian element of group 0x0002 (file meta)
    or 0x0008 (identifying), in implicit or explicit VR.
    """
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    element = int.from_bytes(head[2:4], "little")
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return False
    vr = head[4:6]
    explicit = vr.isalpha() and vr.isupper()
    implicit_length = int.from_bytes(head[4:8], "little")
    return explicit or implicit_length < 0x10000


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)
