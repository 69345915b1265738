"""Webhook notifications (``[notify]``): a JSON POST on the events an operator chose.

- ``payload.py``: what a notification says (the envelope, and no patient data by default);
- ``delivery.py``: one POST, and its retries with backoff;
- ``queue.py``: ``Dispatcher``, a background thread with a bounded queue, so that screening
  never waits on a webhook; on stop, a bounded flush;
- ``events.py``: the pipeline's committed batches as ``positive`` and ``failure`` events;
- ``oneshot.py``: ``notify_now``, the synchronous form for one-shot commands (a drift alarm);
- ``targets.py``: the settings as webhooks (with the bearer token) and a retry policy.
"""

from __future__ import annotations

from worker.config import Settings
from worker.notify.oneshot import notify_now
from worker.notify.payload import EVENTS
from worker.notify.queue import Dispatcher
from worker.notify.targets import retry_policy, webhooks

__all__ = ["EVENTS", "Dispatcher", "notify_now", "open_dispatcher"]


def open_dispatcher(settings: Settings) -> Dispatcher | None:
    """The background dispatcher of the [notify] settings; None when no webhook is configured.
    ``ConfigError`` when ``token_env`` names a variable that is not set."""
    notify = settings.notify
    if not notify.urls:
        return None
    return Dispatcher(
        webhooks(notify),
        events=notify.events,
        policy=retry_policy(notify),
        queue_size=notify.queue_size,
        flush_seconds=notify.flush_seconds,
        include_patient_data=notify.include_patient_data,
    )
