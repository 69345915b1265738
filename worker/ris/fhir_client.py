"""FHIR over HTTP: the sender's transport for ``[[fhir.destinations]]``, one POST per Bundle.

Each result's transaction Bundle (``worker/ris/fhir.py``, as queued in the outbox) is POSTed as it
is to the destination's ``base_url`` with ``Content-Type: application/fhir+json``, with a bearer
token or basic auth from the environment variable its ``secret_env`` names (read once, when
``send`` starts). Only the standard library (``urllib``), as for STOW-RS (``worker/pacs/stow.py``):
every status and the timeout stay in our hands. What the answer means:

- 200 or 201: delivered (a transaction is all or nothing; its conditional creates make a resend
  create nothing new);
- 4xx other than 408 and 429: ``FhirRefused`` with the server's OperationOutcome text, never
  sent again (the row is failed: the Bundle itself, or our credentials, must change);
- 5xx, 408, 429, any other status, a timeout, a refused or dropped connection:
  ``FhirUnavailable``, sent again later.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from worker.config import FhirDestination
from worker.errors import NotDelivered, Refused

FHIR_JSON = "application/fhir+json"
TRY_AGAIN = frozenset({408, 429})
TEXT_CHARS = 500


class FhirUnavailable(NotDelivered):
    """No answer, or one that says to try again (5xx, 408, 429)."""


class FhirRefused(Refused):
    """A 4xx: the server will not take this Bundle as it is."""


def authorization(destination: FhirDestination, secret: str) -> dict[str, str]:
    """The Authorization header of ``destination`` (none for auth = "none")."""
    if destination.auth == "bearer":
        return {"Authorization": f"Bearer {secret}"}
    if destination.auth == "basic":
        token = base64.b64encode(f"{destination.username}:{secret}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}
    return {}


def post(destination: FhirDestination, bundle: bytes, *, secret: str = "") -> int:
    """POST one Bundle; its HTTP status when delivered (200, 201), else ``FhirUnavailable`` or
    ``FhirRefused``."""
    d = destination
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, **authorization(d, secret)}
    if not d.base_url.startswith(("http://", "https://")):
        raise FhirRefused(f"not an http:// or https:// URL: {d.base_url}")
    request = urllib.request.Request(d.base_url, data=bundle, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=d.timeout) as response:  # noqa: S310 (checked above)
            status = response.status
            response.read()
    except urllib.error.HTTPError as exc:
        said = f"{d.base_url} answered HTTP {exc.code} {exc.reason}: {outcome_text(exc.read())}"
        if 400 <= exc.code < 500 and exc.code not in TRY_AGAIN:
            hint = " (check auth, username and secret_env)" if exc.code in (401, 403) else ""
            raise FhirRefused(said + hint) from None
        raise FhirUnavailable(said) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise FhirUnavailable(f"POST to {d.base_url} failed: {reason or type(exc).__name__}") from None
    if status not in (200, 201):
        raise FhirUnavailable(f"{d.base_url} answered HTTP {status}, not 200 or 201")
    return status


def outcome_text(body: bytes) -> str:
    """What an OperationOutcome says (its issues' diagnostics or details), else the body's start."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        return body[:TEXT_CHARS].decode("utf-8", "replace").strip() or "(no body)"
    issues = data.get("issue", []) if isinstance(data, dict) else []
    texts = []
    for issue in issues if isinstance(issues, list) else []:
        if isinstance(issue, dict):
            details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
            text = issue.get("diagnostics") or details.get("text") or issue.get("code")
            if text:
                texts.append(str(text))
    return "; ".join(texts)[:TEXT_CHARS] or "(no OperationOutcome text)"
