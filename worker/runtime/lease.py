"""The lease: how a worker shows that it is alive, and when its claims may be taken over.

A worker touches ``.alive`` in its work area (its heartbeat); one whose heartbeat is older
than ``[inbox] lease_seconds`` is presumed dead, and a live worker adopts its claimed files
(``WorkArea.adopt_abandoned``). The heartbeat is kept from a thread of its own, a few times
per lease, so that a long batch, a database outage or a retry's backoff never makes a live
worker look dead; live workers look for dead ones at the same cadence.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from worker.errors import TransientError

log = logging.getLogger(__name__)

# Beats per lease: a worker must miss this many in a row before it is presumed dead.
BEATS_PER_LEASE = 4
MAX_INTERVAL = 30.0


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def beat_interval(lease_seconds: float) -> float:
    """Seconds between heartbeats, and between looks for dead workers."""
    return min(MAX_INTERVAL, lease_seconds / BEATS_PER_LEASE)


class Heartbeat:
    """Calls ``beat`` every ``interval`` seconds from a thread, until ``stop()``.

    A beat that fails (``TransientError``: the share dropped) is logged once and tried
    again; the main loop notices the share by itself and waits it out.
    """

    def __init__(self, beat: Callable[[], None], interval: float):
        self._beat = beat
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except TransientError as exc:
                if not failing:
                    log.warning("heartbeat failed: %s (other workers may adopt this one's files)", exc)
                failing = True
            else:
                if failing:
                    log.info("heartbeat back")
                failing = False
