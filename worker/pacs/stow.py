"""DICOMweb STOW-RS: a batch of Part 10 files in one HTTP request, and what the answer says.

The sender's other transport, for a destination with a ``dicomweb_url``: one
``POST <url>/studies`` per batch, ``multipart/related; type="application/dicom"``, one part per
object, as they are in the outbox. The answer (DICOM JSON) lists the stored objects in the
Referenced SOP Sequence (0008,1199) and the refused ones in the Failed SOP Sequence
(0008,1198), each with its Failure Reason (0008,1197).

Only the standard library (``urllib``): a few dozen lines need no HTTP client package, every
status and timeout stays in our hands, and the tests run against an ``http.server`` stand-in.
``store`` raises ``StowError`` when the request got no usable answer (a connection error, a
timeout, an HTTP 4xx or 5xx): the sender retries the whole batch.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"

# Failure reasons that no retry can change: the PACS does not take this SOP class, or the
# object does not match its class (PS3.18, the Store Instances failure reasons). Any other
# reason (out of resources 0xA7xx, processing failure 0x0110, ...) is retried.
PERMANENT = frozenset({0x0122})
PERMANENT_GROUPS = frozenset({0xA9})


class StowError(Exception):
    """The request had no usable answer; the whole batch is retried."""


@dataclass
class Answer:
    """What a STOW-RS response says: the HTTP status, the SOP Instance UIDs it lists as stored,
    and the refused ones (UID -> (reason, permanent))."""

    status: int
    stored: set[str] = field(default_factory=set)
    failed: dict[str, tuple[str, bool]] = field(default_factory=dict)


def store(
    url: str,
    payloads: Sequence[bytes],
    *,
    username: str = "",
    password: str = "",
    timeout: float = 60.0,
) -> Answer:
    """POST ``payloads`` (Part 10 files) to ``url``/studies in one request; the parsed answer."""
    boundary = f"xray-screen-{secrets.token_hex(16)}"
    body = bytearray()
    for payload in payloads:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        body += payload
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode("ascii")
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json, application/json",
    }
    if username:
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    if not url.startswith(("http://", "https://")):
        raise StowError(f"not an http:// or https:// URL: {url}")
    endpoint = f"{url.rstrip('/')}/studies"
    request = urllib.request.Request(endpoint, data=bytes(body), headers=headers)  # noqa: S310 (checked above)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, content = response.status, response.read()
    except urllib.error.HTTPError as exc:
        hint = " (check username and password_env)" if exc.code in (401, 403) else ""
        raise StowError(f"STOW-RS answered HTTP {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise StowError(f"STOW-RS request failed: {reason or type(exc).__name__}") from None
    return parse(status, content)


def parse(status: int, content: bytes) -> Answer:
    """The stored and refused objects of a 2xx STOW-RS response (an empty body lists none)."""
    answer = Answer(status)
    try:
        data: Any = json.loads(content) if content.strip() else {}
    except ValueError:
        raise StowError(f"STOW-RS answered HTTP {status} with a body that is not DICOM JSON") from None
    if isinstance(data, list):  # a data set, as some servers send it: in a list of one
        data = data[0] if data else {}
    if not isinstance(data, dict):
        raise StowError(f"STOW-RS answered HTTP {status} with a body that is not DICOM JSON")
    for item in _items(data, REFERENCED_SOP_SEQUENCE):
        uid = _value(item, REFERENCED_SOP_INSTANCE_UID)
        if uid:
            answer.stored.add(str(uid))
    for item in _items(data, FAILED_SOP_SEQUENCE):
        uid = _value(item, REFERENCED_SOP_INSTANCE_UID)
        if not uid:
            continue
        code = _value(item, FAILURE_REASON)
        if isinstance(code, int):
            permanent = code in PERMANENT or code >> 8 in PERMANENT_GROUPS
            reason = f"STOW-RS refused it: failure reason 0x{code:04X}"
        else:
            permanent, reason = False, "STOW-RS refused it (no failure reason)"
        answer.failed[str(uid)] = (reason, permanent)
        answer.stored.discard(str(uid))  # listed as both: not stored
    return answer


def _items(data: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = data.get(tag)
    values = element.get("Value", []) if isinstance(element, dict) else []
    return [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []


def _value(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None
