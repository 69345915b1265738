"""One webhook delivery: a POST, tried again with backoff while the failure is worth it.

A connection refused or reset, a timeout, an HTTP 5xx, 408 or 429 are transient: the next
attempt may succeed. Any other answer outside 2xx (a 404, a 401 for a wrong token, a
redirect, which is not followed) is final: retrying would only repeat it. Logs name a
webhook by its scheme and host only: a webhook URL's path often holds its secret.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from worker.errors import TransientError
from worker.runtime.retry import RetryPolicy, Stopped, retrying

log = logging.getLogger(__name__)
RETRIED_STATUS = frozenset({408, 429})


class WebhookRefused(Exception):
    """The webhook answered with a status another attempt would not change."""


class WebhookUnavailable(TransientError):
    """The webhook could not be reached, timed out, or answered 5xx/408/429."""


@dataclass(frozen=True)
class Webhook:
    """Where to POST, and how: ``headers`` (the bearer token, if any) and ``timeout`` seconds."""

    url: str
    timeout: float = 5.0
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def where(self) -> str:
        """The URL without its path, query or credentials: safe to log."""
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is answered as the HTTPError it is


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(hook: Webhook, body: bytes) -> int:
    """POST ``body`` (JSON) once; the 2xx status, or ``WebhookUnavailable``/``WebhookRefused``."""
    request = urllib.request.Request(  # noqa: S310 (the scheme is checked by the settings: http or https)
        hook.url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "xray-screen", **hook.headers},
    )
    try:
        with _OPENER.open(request, timeout=hook.timeout) as response:
            response.read(65_536)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code >= 500 or exc.code in RETRIED_STATUS:
            raise WebhookUnavailable(f"{hook.where} answered HTTP {exc.code}") from None
        raise WebhookRefused(f"{hook.where} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:  # refused, reset, DNS, timeout
        reason = getattr(exc, "reason", exc)
        raise WebhookUnavailable(f"{hook.where} unreachable: {reason}") from None


def deliver(hook: Webhook, body: bytes, policy: RetryPolicy, stop: threading.Event, *, event: str) -> bool:
    """POST ``body`` to ``hook`` with ``policy``'s retries; whether it was delivered. Never
    raises: a webhook that stays down is logged once, and ``stop`` ends any wait at once."""
    attempts = policy.attempts

    def describe(exc: BaseException, delay: float, attempt: int) -> str:
        return f"{event} notification: {exc}; retrying in {delay:.1f} s (attempt {attempt} of {attempts})"

    try:
        retrying(lambda: post(hook, body), policy, stop, describe=describe)
        return True
    except Stopped:
        log.warning("%s notification to %s not delivered: stopping", event, hook.where)
    except WebhookUnavailable as exc:
        log.error("%s notification not delivered after %s attempts: %s", event, attempts, exc)
    except WebhookRefused as exc:
        log.error("%s notification refused: %s (not retried)", event, exc)
    except Exception as exc:  # our own fault: a notification never stops the caller
        log.error("%s notification to %s failed: %s: %s", event, hook.where, type(exc).__name__, exc)
    return False
