"""Crash points for the chaos harness (``bench/chaos.py``); inert unless asked for.

This module exists only so that the harness can kill the daemon at the moments a crash
matters most, which outside timing rarely hits. It does nothing unless the daemon is
started with ``XRAY_SCREEN_FAULT`` set (read once, by ``xray-worker watch``):

    XRAY_SCREEN_FAULT=mid-move XRAY_SCREEN_FAULT_EVERY=3 xray-worker watch ...

and then the process sends itself SIGKILL the third time it reaches that point:

- ``in-commit``: a batch's rows are written, its transaction not yet committed;
- ``after-commit``: the batch is committed, none of its files moved;
- ``mid-move``: a file has its new name in processed/ or failed/ and still its old one in
  the work area (the hard link made, the old name not yet removed).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from worker.errors import ConfigError

log = logging.getLogger(__name__)

POINTS = ("in-commit", "after-commit", "mid-move")
POINT_ENV = "XRAY_SCREEN_FAULT"
EVERY_ENV = "XRAY_SCREEN_FAULT_EVERY"


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Faults:
    """Kill the process the ``every``-th time it reaches ``point``; no point, no effect."""

    point: str = ""
    every: int = 1
    kill: Callable[[], None] = field(default=_sigkill, repr=False)
    reached: int = field(default=0, init=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Faults:
        point = environ.get(POINT_ENV, "").strip()
        if not point:
            return cls()
        if point not in POINTS:
            raise ConfigError(f"{POINT_ENV}={point!r}: expected one of {', '.join(POINTS)}")
        raw = environ.get(EVERY_ENV, "1")
        try:
            every = int(raw)
        except ValueError:
            every = 0
        if every < 1:
            raise ConfigError(f"{EVERY_ENV}={raw!r}: expected a whole number, at least 1")
        log.warning("fault injection armed: SIGKILL at the %s point, time %d", point, every)
        return cls(point, every)

    def reach(self, point: str) -> None:
        """Called by the daemon at each crash point; kills the process when it is the chosen one."""
        if point != self.point:
            return
        self.reached += 1
        if self.reached == self.every:
            log.warning("fault injection: SIGKILL at %s (time %d)", point, self.reached)
            self.kill()
