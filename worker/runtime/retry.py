"""Retrying transient failures: one policy object and one interruptible wait, for every loop.

A ``RetryPolicy`` answers one question: given the error and how many attempts failed in a
row, how long to wait before the next one, or ``None`` to give up. The loops only ask it:
the daemon's (never gives up: a site's inbox waits out any outage), the scan's commits
(gives up after ``attempts``, about two minutes, then exits 75 with what it committed kept).
``wait(stop, seconds)`` waits on the stop event, so ``stop()`` ends any wait at once, during
an outage too.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from worker.errors import TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")


class Stopped(TransientError):
    """The wait before a retry was cut short by ``stop()``: nothing more is tried."""


@dataclass
class RetryPolicy:
    """Delays of initial, 2x, 4x ... up to ``maximum`` seconds, with jitter; ``attempts`` failures
    in a row (None: never) and the policy gives up."""

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.1
    attempts: int | None = None

    def delay(self, error: BaseException, attempt: int) -> float | None:
        """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...); None: give up."""
        if not isinstance(error, TransientError):
            return None  # only transient failures are worth another try
        if self.attempts is not None and attempt >= self.attempts:
            return None
        delay = min(self.maximum, self.initial * self.factor ** (attempt - 1))
        return delay * (1 + random.uniform(-self.jitter, self.jitter))


@dataclass
class Backoff:
    """A policy's delays for a loop that counts its own failures in a row: ``next_delay()``
    after each, ``reset()`` after a success."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    failures: int = field(default=0, init=False)

    def next_delay(self, error: BaseException | None = None) -> float | None:
        self.failures += 1
        return self.policy.delay(error or TransientError(), self.failures)

    def reset(self) -> None:
        self.failures = 0


def wait(stop: threading.Event, seconds: float) -> bool:
    """Wait ``seconds``, or until ``stop`` is set; True when stopped."""
    return stop.wait(max(0.0, seconds))


def retrying(
    call: Callable[[], T],
    policy: RetryPolicy,
    stop: threading.Event,
    *,
    describe: Callable[[BaseException, float, int], str] | None = None,
) -> T:
    """``call()``, again after the policy's delay while it raises ``TransientError``.

    Raises the last error when the policy gives up, and ``Stopped`` (a ``TransientError``)
    when ``stop`` is set during a wait.
    """
    attempt = 0
    while True:
        try:
            return call()
        except TransientError as exc:
            attempt += 1
            delay = policy.delay(exc, attempt)
            if delay is None:
                raise
            text = describe(exc, delay, attempt) if describe else f"{exc}; retrying in {delay:.1f} s"
            log.warning("%s", text)
            if wait(stop, delay):
                raise Stopped(f"stopped while waiting to retry: {exc}") from exc
