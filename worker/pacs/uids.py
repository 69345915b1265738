"""UIDs derived from what an object is about, so that building it again gives the same object.

A UID is ``2.25.`` followed by the decimal value of a UUID (ITU-T X.667, the root DICOM
reserves for UUIDs). The UUID is name-based: the first 128 bits of the SHA-256 of the parts
that identify the object, with the version (8, custom) and variant bits set as RFC 9562 asks.
The result is at most 44 characters, well within the 64 a UI element allows.

- an object's SOP Instance UID: (source SOP Instance UID, model SHA-256, kind);
- its Series Instance UID: (source Study Instance UID, model SHA-256, kind), so each study
  has one series per kind of object and model, whichever of its films were screened;
- the device observer (the model) in an SR: (model SHA-256).

The same result rebuilt gives the same UIDs; a new model, another kind or another source
gives different ones.
"""

from __future__ import annotations

import hashlib

PREFIX = "2.25."
# Bumped only if the scheme changes: every UID would change with it.
SCHEME = "xray-screen/pacs/1"


def derive_uid(*parts: str) -> str:
    """A ``2.25`` UID that depends only on ``parts`` (and their order)."""
    if not parts:
        raise ValueError("a derived UID needs at least one part")
    digest = hashlib.sha256("\x00".join((SCHEME, *parts)).encode()).digest()
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: a custom, name-based UUID
    raw[8] = (raw[8] & 0x3F) | 0x80  # variant: RFC 9562
    return PREFIX + str(int.from_bytes(raw, "big"))


def instance_uid(source_sop_instance_uid: str, model_sha256: str, kind: str) -> str:
    """The SOP Instance UID of the ``kind`` object a model made from one source instance."""
    return derive_uid("instance", source_sop_instance_uid, model_sha256, kind)


def series_uid(study_instance_uid: str, model_sha256: str, kind: str) -> str:
    """The series, in one study, of every ``kind`` object one model made there."""
    return derive_uid("series", study_instance_uid, model_sha256, kind)


def device_uid(model_sha256: str) -> str:
    """The model as an SR device observer."""
    return derive_uid("device", model_sha256)


def tracking_uid(source_sop_instance_uid: str, model_sha256: str) -> str:
    """The SR measurement group of one model's finding on one source instance."""
    return derive_uid("finding", source_sop_instance_uid, model_sha256)
