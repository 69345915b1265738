"""Which study dates a pull asks the PACS for, and the daily window it may retrieve in.

Pure: dates and times in, dates and answers out; the clock is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time, timedelta

from worker.errors import UsageError

# A first run with neither --since nor --days, and no earlier run to go on from: yesterday and today.
FIRST_RUN_DAYS = 1


@dataclass(frozen=True)
class Period:
    """Study dates from ``first`` to ``last``, both included."""

    first: date
    last: date

    def dicom_range(self) -> str:
        """As a DICOM date range matching key: ``20261201-20261207``."""
        return f"{self.first:%Y%m%d}-{self.last:%Y%m%d}"


def choose_period(
    *, since: date | None, days: int | None, high_water: date | None, today: date
) -> tuple[Period, str]:
    """The period to query, and where it came from (for the log line).

    ``--since D``: D to today. ``--days N``: the N days before today, and today. Neither: from
    the last successful query's last date (its high-water mark; that day is asked again, so a
    study archived late that day is found), or, on a first run, ``FIRST_RUN_DAYS``.
    ``UsageError`` for both at once, a date in the future or a negative count.
    """
    if since is not None and days is not None:
        raise UsageError("--since and --days both given: choose one")
    if since is not None:
        if since > today:
            raise UsageError(f"--since {since.isoformat()} is in the future")
        return Period(since, today), f"--since {since.isoformat()}"
    if days is not None:
        if days < 0:
            raise UsageError(f"--days {days}: must be 0 or more")
        return Period(today - timedelta(days=days), today), f"--days {days}"
    if high_water is not None:
        mark = high_water.isoformat()
        return Period(min(high_water, today), today), f"the last run's high-water mark {mark}"
    first = today - timedelta(days=FIRST_RUN_DAYS)
    return Period(first, today), f"a first run: the last {FIRST_RUN_DAYS} day"


@dataclass(frozen=True)
class Window:
    """A daily window of local time, ``20:00-06:00`` (past midnight) or ``09:00-17:00``; empty:
    any time (``[[pull.sources]] window``, already checked by the settings)."""

    text: str = ""

    def _bounds(self) -> tuple[time, time]:
        start, end = self.text.split("-")
        return time.fromisoformat(start), time.fromisoformat(end)

    def open_at(self, now: time) -> bool:
        """Whether retrieving may go on at ``now`` (local time); the end is excluded."""
        if not self.text:
            return True
        start, end = self._bounds()
        if start < end:
            return start <= now < end
        return now >= start or now < end
