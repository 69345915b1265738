"""The webhooks and the retry policy of ``[notify]``, as delivery needs them.

The bearer token is read from the environment variable ``token_env`` names, at start, so
that it is never in a config file; a variable named but not set is a configuration error
(a webhook that answers 401 to every event would fail silently otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from worker.config import NotifySettings
from worker.errors import ConfigError
from worker.notify.delivery import Webhook
from worker.runtime.retry import RetryPolicy


def webhooks(notify: NotifySettings, environ: Mapping[str, str] | None = None) -> list[Webhook]:
    """One ``Webhook`` per configured URL, with the bearer token when ``token_env`` is set."""
    environ = os.environ if environ is None else environ
    headers: dict[str, str] = {}
    if notify.token_env and notify.urls:
        token = environ.get(notify.token_env, "")
        if not token:
            raise ConfigError(
                f"[notify] token_env = {notify.token_env!r}: that environment variable is not set "
                "(it holds the webhooks' bearer token)"
            )
        headers["Authorization"] = f"Bearer {token}"
    return [Webhook(url=url, timeout=notify.timeout, headers=headers) for url in notify.urls]


def retry_policy(notify: NotifySettings) -> RetryPolicy:
    """``max_attempts`` tries, waiting ``backoff_base`` seconds, doubling up to ``backoff_cap``."""
    return RetryPolicy(
        initial=notify.backoff_base, maximum=notify.backoff_cap, attempts=notify.max_attempts, jitter=0.1
    )


def subscribed(notify: NotifySettings, event: str) -> bool:
    """Whether ``event`` is sent at all: a webhook configured, and the event chosen."""
    return bool(notify.urls) and event in notify.events
