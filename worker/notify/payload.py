"""What a notification says: one JSON object per event, the same envelope for every event.

    {"source": "xray-screen", "event": "positive", "time": "2026-12-02T12:17:03.120Z",
     "host": "xray-01", "data": {...}}

``data`` holds identifiers and paths only (a content SHA-256, an audit event id, a SOP
Instance UID, the file's path): never a patient's name, ID or birth date. With
``include_patient_data`` the DICOM Patient ID and Accession Number may be added by the
caller; the keys below that can name a patient are removed from every payload otherwise,
whoever built it, so a careless caller cannot leak them.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from worker.config import NOTIFY_EVENTS

EVENTS: tuple[str, ...] = NOTIFY_EVENTS
# Identify a patient: sent only with include_patient_data (and the first three never).
NEVER_SENT = frozenset({"patient_name", "patient_birth_date", "patient_address"})
PATIENT_KEYS = frozenset({"patient_id", "accession_number", "other_patient_ids"}) | NEVER_SENT


def envelope(event: str, data: Mapping[str, Any], *, include_patient_data: bool = False) -> dict[str, Any]:
    """The JSON object POSTed for ``event`` with ``data`` (patient keys removed unless allowed)."""
    if event not in EVENTS:
        raise ValueError(f"unknown notification event {event!r}; known: {', '.join(EVENTS)}")
    return {
        "source": "xray-screen",
        "event": event,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "host": socket.gethostname(),
        "data": scrub(data, include_patient_data=include_patient_data),
    }


def scrub(data: Mapping[str, Any], *, include_patient_data: bool) -> dict[str, Any]:
    """``data`` without the keys that identify a patient, at any depth (in lists too)."""
    removed = NEVER_SENT if include_patient_data else PATIENT_KEYS

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items() if k not in removed}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return clean(data)


def encode(message: Mapping[str, Any]) -> bytes:
    """The request body: compact UTF-8 JSON; values JSON does not know (paths, UUIDs) as text."""
    return json.dumps(message, separators=(",", ":"), default=str).encode()
