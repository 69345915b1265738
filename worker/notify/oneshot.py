"""``notify_now``: a notification from a one-shot command (``xray-worker report drift``),
sent before the command returns, with the configured timeout and retries."""

from __future__ import annotations

import logging
import threading
from typing import Any

from worker.config import Settings
from worker.notify.delivery import deliver
from worker.notify.payload import encode, envelope
from worker.notify.targets import retry_policy, subscribed, webhooks

log = logging.getLogger(__name__)


def notify_now(settings: Settings, event: str, data: dict[str, Any]) -> bool:
    """POST ``event`` with ``data`` to every webhook subscribed to it, and wait for the answers.

    Returns whether every delivery succeeded; True when none is configured for ``event``.
    Never raises: a failure is logged and answered False (a notification never fails the
    command that sends it). Patient keys in ``data`` are removed unless
    ``[notify] include_patient_data`` (``worker/notify/payload.py``).
    """
    notify = settings.notify
    try:
        if not subscribed(notify, event):
            return True
        body = encode(envelope(event, data, include_patient_data=notify.include_patient_data))
        hooks, policy = webhooks(notify), retry_policy(notify)
    except Exception as exc:
        log.error("%s notification not sent: %s", event, exc)
        return False
    never = threading.Event()  # a one-shot command has no stop() to cut a retry's wait short
    results = [deliver(hook, body, policy, never, event=event) for hook in hooks]
    return all(results)
