"""``Dispatcher``: notifications sent by a background thread, so that screening never waits.

``publish(event, data)`` only appends to a bounded queue and returns. When the queue is full
(the webhooks down or slow for long), the **oldest** waiting notification is dropped, so
that the newest (what is happening now, and ``stopped`` at the end) still goes out; each
drop is logged (the first of a run of drops, then every 100th) and counted in ``stats``,
which ``worker/metrics`` exports. ``close()`` stops taking notifications and keeps sending
what is queued for at most ``flush_seconds`` (plus one request's timeout); whatever is left
then is counted as dropped.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any

from worker.notify.delivery import Webhook, deliver
from worker.notify.payload import encode, envelope
from worker.runtime.retry import RetryPolicy

log = logging.getLogger(__name__)


class Dispatcher:
    """Sends events to ``hooks`` from a thread of its own; ``events`` are the ones sent."""

    def __init__(
        self,
        hooks: Sequence[Webhook],
        *,
        events: Sequence[str],
        policy: RetryPolicy,
        queue_size: int = 1000,
        flush_seconds: float = 5.0,
        include_patient_data: bool = False,
    ):
        self.hooks = list(hooks)
        self.events = frozenset(events) if self.hooks else frozenset()
        self.policy = policy
        self.flush_seconds = flush_seconds
        self.include_patient_data = include_patient_data
        # Per outcome (sent, failed, dropped), by event: read by the metrics exporter.
        self.stats: Counter[tuple[str, str]] = Counter()
        self._queue: deque[tuple[str, bytes]] = deque(maxlen=queue_size)
        self._ready = threading.Condition()
        self._closing = False
        self._abort = threading.Event()  # cuts retries' waits short once the flush is over
        self._idle = threading.Event()  # set while nothing is queued or being sent
        self._idle.set()
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        """Notifications waiting to be sent."""
        return len(self._queue)

    def counts(self) -> dict[tuple[str, str], int]:
        """A copy of ``stats`` ((outcome, event) -> notifications), safe from any thread."""
        with self._ready:
            return dict(self.stats)

    def wants(self, event: str) -> bool:
        """Whether ``event`` is sent at all (a caller can skip building its data)."""
        return event in self.events

    def publish(self, event: str, data: Mapping[str, Any]) -> None:
        """Queue ``event`` for sending and return at once (a no-op for an event not chosen)."""
        if event not in self.events:
            return
        message = encode(envelope(event, data, include_patient_data=self.include_patient_data))
        with self._ready:
            if self._closing:
                self._drop(event, "the dispatcher is closed")
                return
            if len(self._queue) == self._queue.maxlen:
                dropped, _ = self._queue[0]  # the deque's maxlen pushes it out on append
                self._drop(dropped, f"the queue is full ({self._queue.maxlen})")
            self._queue.append((event, message))
            self._idle.clear()
            self._ready.notify()
        self._start()

    def _drop(self, event: str, why: str) -> None:
        self.stats[("dropped", event)] += 1
        dropped = sum(n for (outcome, _), n in self.stats.items() if outcome == "dropped")
        if dropped == 1 or dropped % 100 == 0:
            log.warning("%s notification dropped: %s (%d dropped so far)", event, why, dropped)

    def _start(self) -> None:
        if self._thread is None and self.hooks:
            with self._ready:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._idle.set()
                    self._ready.wait()
                if not self._queue:  # closing, and all sent
                    self._idle.set()
                    return
                event, body = self._queue.popleft()
            delivered = [deliver(hook, body, self.policy, self._abort, event=event) for hook in self.hooks]
            with self._ready:
                self.stats[("sent" if all(delivered) else "failed", event)] += 1

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until everything queued was sent or given up (tests, and ``close``)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        """Stop taking notifications; send what is queued for at most ``flush_seconds``."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        thread = self._thread
        if thread is None:
            return
        thread.join(self.flush_seconds)
        if thread.is_alive():
            self._abort.set()  # retries give up now; a request in flight ends by its timeout
            with self._ready:
                left = list(self._queue)
                self._queue.clear()
                for event, _ in left:
                    self._drop(event, f"still queued {self.flush_seconds:g} s after the stop")
            thread.join(max(hook.timeout for hook in self.hooks) + 1.0)
        self._idle.set()
