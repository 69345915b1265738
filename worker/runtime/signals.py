"""Two-stage shutdown, for watch and scan: the first SIGTERM/SIGINT finishes the work in
hand, a second one exits at once."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from worker import exitcodes

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def two_stage_shutdown(
    stop: Callable[[], None], *, on_first: Callable[[str], None], on_second: Callable[[str], None]
) -> Iterator[None]:
    """First signal: tell (``on_first(name)``) and ``stop()``; second: tell and exit 130.
    The previous handlers are back when the block ends."""

    def first(signum: int, _frame: Any) -> None:
        on_first(signal.Signals(signum).name)
        stop()
        for sig in SIGNALS:
            signal.signal(sig, second)

    def second(signum: int, _frame: Any) -> None:
        on_second(signal.Signals(signum).name)
        os._exit(exitcodes.INTERRUPTED)

    previous = {sig: signal.signal(sig, first) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
