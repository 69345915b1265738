"""The runner's middleware: the named points of a run that cross-cutting work hooks into,
metrics (``worker/metrics``), notifications (``worker/notify``) and the chaos harness's crash
points, without the runner or its sources knowing any of them (in the manner of dramatiq's
middleware: each is a class with a method per point, and the runner calls them in order).

The points:

- ``started()`` once the daemon is ready, ``stopped()`` when it has finished (a scan calls
  neither: it has a summary instead);
- ``committed(batch)`` once per committed batch (``worker/pipeline/runner.py``), from the
  thread that committed it, after the transaction and before the inbox's files are filed
  (``item.path`` is still where the daemon read it). One call per batch, not per file: an
  observer's cost is paid once per batch.

The default ``Observer`` does nothing. ``FaultPoint`` kills the process at ``after-commit``
when the chaos harness asks (``worker/runtime/faults.py``). ``Observers`` hands each point to
several, and is the fault boundary: an observer that raises is logged and the others, and the loop, go on; a
metric or a webhook never stops screening.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Committed:
    """One committed batch: its items (each with its outcome) and what the commit took."""

    items: Sequence[Any]  # the pipeline's ``Item``s (not imported: observers need no database)
    commit_seconds: float
    at: float = field(default_factory=time.time)  # wall clock, when the transaction ended


class Observer:
    """Does nothing at each point; subclasses override the ones they need."""

    def started(self) -> None:
        """The daemon is ready and about to take files."""

    def committed(self, batch: Committed) -> None:
        """``batch`` was committed (its files are not filed yet)."""

    def stopped(self) -> None:
        """The daemon has finished its last batch."""


class FaultPoint(Observer):
    """The chaos harness's crash point after a commit (``faults.reach(point)``; inert unless
    armed). Not behind the fault boundary: the crash it stands for must happen."""

    def __init__(self, faults: Any, point: str):
        self.faults, self.point = faults, point

    def committed(self, batch: Committed) -> None:
        self.faults.reach(self.point)


class Observers(Observer):
    """Several observers, each called in turn; one that raises is logged, never propagated."""

    def __init__(self, observers: Iterable[Observer] = ()):
        self.observers = list(observers)

    def started(self) -> None:
        for observer in self.observers:
            self._call(observer, "started")

    def committed(self, batch: Committed) -> None:
        for observer in self.observers:
            self._call(observer, "committed", batch)

    def stopped(self) -> None:
        for observer in self.observers:
            self._call(observer, "stopped")

    @staticmethod
    def _call(observer: Observer, point: str, *args: object) -> None:
        try:
            getattr(observer, point)(*args)
        except Exception:
            log.exception("%s.%s failed; screening goes on", type(observer).__name__, point)
