"""What a scan tells the person running it: a live line in a terminal, a line now and then
in a log, and a summary at the end. Pure text from counts; the scan decides when to call."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TextIO

from worker.pipeline.counts import Counts

TTY_REFRESH = 0.2  # seconds between redraws of the live line


def rate(counts: Counts, seconds: float) -> float:
    """Files handled per second (skipped files cost next to nothing and are left out)."""
    return counts.handled / seconds if seconds > 0 else 0.0


def status_line(counts: Counts, seconds: float, limit: int | None = None) -> str:
    """``1234 files: 1000 screened, 12 duplicates, 200 skipped, 22 failed | 15.2 images/s | ETA 2m10s``."""
    parts = [
        f"{counts.handled + counts.skipped} files: {counts.screened} screened",
        f"{counts.duplicates} duplicates",
        f"{counts.skipped} skipped",
        *([f"{counts.out_of_scope.total()} out of scope"] if counts.out_of_scope else []),
        f"{counts.failed.total()} failed",
    ]
    line = ", ".join(parts)
    if counts.handled:  # no rate before a file was read, nor for a rescan that skips them all
        line += f" | {rate(counts, seconds):.1f} images/s"
    if limit is not None and rate(counts, seconds) > 0:
        line += f" | ETA {duration(max(0, limit - counts.handled) / rate(counts, seconds))}"
    return line


def summary_lines(counts: Counts, seconds: float, how: str = "done") -> list[str]:
    """The end-of-run summary: ``how`` is ``done``, ``interrupted`` or why the scan stopped."""
    lines = [
        f"scan {how} after {duration(seconds)}: {counts.handled} files read"
        + (f", {rate(counts, seconds):.1f} images/s" if counts.handled else ""),
        f"  {counts.screened} screened, {counts.positives} positive",
        f"  {counts.duplicates} duplicates (content already screened by this model)",
        f"  {counts.skipped} skipped (unchanged since the last scan)",
        f"  {counts.out_of_scope.total()} out of scope (the gate: not for this model to judge)",
        *_by_reason(counts.out_of_scope),
        f"  {counts.failed.total()} failed",
        *_by_reason(counts.failed),
    ]
    if counts.unreadable_folders:
        lines.append(f"  {counts.unreadable_folders} folders could not be read (see the warnings)")
    return lines


def _by_reason(counter: Counter[str], most: int = 10) -> list[str]:
    ranked = sorted(counter.items(), key=lambda i: (-i[1], i[0]))
    lines = [f"    {n} {reason}" for reason, n in ranked[:most]]
    if len(ranked) > most:
        lines.append(f"    ... and {sum(n for _, n in ranked[most:])} more")
    return lines


def duration(seconds: float) -> str:
    """``4.2 s``, ``2m10s``, ``3h05m``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """A live status line in a terminal; one line every ``interval`` seconds otherwise."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        interval: float = 60.0,
        limit: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = TTY_REFRESH if self.tty else interval
        self.limit = limit
        self.clock = clock
        self.started = clock()
        self._next = self.started + self.interval
        self._drawn = False
        self._lock = threading.Lock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def update(self, counts: Counts) -> None:
        """Called from the scan and from its commit thread: one writer at a time."""
        with self._lock:
            now = self.clock()
            if now < self._next:
                return
            self._next = now + self.interval
            line = status_line(counts, now - self.started, self.limit)
            if self.tty:
                self.stream.write(f"\r{line}\x1b[K")
                self._drawn = True
            else:
                self.stream.write(f"scan: {line}\n")
            self.stream.flush()

    def finish(self) -> None:
        """End the live line, so that what follows starts on a line of its own."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
