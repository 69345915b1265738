"""Periods of time as the commands name them, as UTC moments: a report's start (``--since 7d``),
the drift check's recent window (``7d``) and its reference (``site-profile``,
``2026-11-01..2026-11-30`` or ``28d``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from worker.errors import UsageError

SITE_PROFILE = "site-profile"
_DURATION = re.compile(r"(\d+)\s*([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime  # excluded
    label: str


def duration(text: str) -> timedelta:
    """``30m``, ``12h``, ``7d``, ``2w``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or int(match[1]) == 0:
        raise UsageError(f"{text!r} is not a duration: use 7d, 48h, 2w or 30m")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def parse_since(text: str, now: datetime | None = None) -> datetime | None:
    """A report's start: ``7d``, ``12h``, ``30m``, ``2w`` before ``now``, an ISO date or time (UTC
    unless it says otherwise), or ``all`` (None). ``ValueError`` for anything else."""
    now = now or datetime.now(UTC)
    text = text.strip().lower()
    if text == "all":
        return None
    if match := _DURATION.fullmatch(text):
        return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (7d, 12h, 30m, 2w), an ISO date, or 'all'") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def window(text: str, now: datetime) -> Period:
    """The last ``text`` until ``now``."""
    start = now - duration(text)
    return Period(start, now, f"the {text.strip()} window {_when(start)} .. {_when(now)} UTC")


def parse_reference(text: str) -> timedelta | tuple[datetime, datetime] | None:
    """``site-profile`` (None), a duration, or a period (its start and its excluded end)."""
    text = text.strip()
    if text == SITE_PROFILE:
        return None
    if ".." not in text:
        try:
            return duration(text)
        except UsageError:
            raise UsageError(
                f"reference {text!r}: use site-profile, a period (2026-11-01..2026-11-30) or a duration (28d)"
            ) from None
    first, _, last = text.partition("..")
    start, end = _moment(first, end=False), _moment(last, end=True)
    if end <= start:
        raise UsageError(f"reference {text!r}: it ends before it starts")
    return start, end


def reference(text: str, recent: Period, *, overlap: bool = False) -> Period | None:
    """The reference period; None for the site profile. A period may not overlap the window
    (unless ``overlap``: the dashboard only draws it as a line)."""
    parsed = parse_reference(text)
    text = text.strip()
    if parsed is None:
        return None
    if isinstance(parsed, timedelta):
        start = recent.start - parsed
        label = f"the {text} before the window ({_when(start)} .. {_when(recent.start)} UTC)"
        return Period(start, recent.start, label)
    start, end = parsed
    if end > recent.start and not overlap:
        raise UsageError(
            f"reference {text!r} overlaps the window, which starts {_when(recent.start)} UTC: "
            "choose an earlier period or a shorter --window"
        )
    return Period(start, end, text)


def _moment(text: str, *, end: bool) -> datetime:
    """An ISO date or time, UTC unless it says otherwise; a date ending a period includes its day."""
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        raise UsageError(
            f"{text!r} is not an ISO date or time: a reference period reads 2026-11-01..2026-11-30"
        ) from None
    if end and len(text) == 10:  # a date: to the end of that day
        moment += timedelta(days=1)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")
