"""The dashboard's charts as inline SVG: plain data in, an ``<svg>`` element out.

matplotlib's object API with its SVG canvas (no pyplot, no display, no global state); text is
drawn as paths, so a page needs no font. Each function returns the SVG markup without its XML
prolog, ready to sit inside HTML.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
from matplotlib import dates as mdates
from matplotlib import rc_context
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

WIDTH, HEIGHT = 9.0, 3.4  # inches, at 100 dpi: 900 x 340 px
COLOURS = {
    "screened": "#1f77b4",
    "duplicate": "#9fb7cc",
    "out_of_scope": "#ff7f0e",
    "failed": "#d62728",
    "pending": "#ffbf00",
    "delivered": "#2ca02c",
    "committed": "#1a6b1a",
}
NAMES = {"out_of_scope": "out of scope (gate)", "duplicate": "duplicate (already screened)"}
_PROLOG = re.compile(r"^.*?(?=<svg)", re.S)
Span = tuple[date, date] | None  # the first and last day of the period shown
STYLE = {"svg.fonttype": "path", "font.size": 9, "axes.titlesize": 11, "axes.titleweight": "bold"}


def styled(plot: Callable[..., str]) -> Callable[..., str]:
    """Draw under the dashboard's style (font sizes are read when an artist is made)."""

    @functools.wraps(plot)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        with rc_context(STYLE):
            return plot(*args, **kwargs)

    return wrapper


@styled
def daily_volume(
    files_by_day: Mapping[date, Mapping[str, int]], outcomes: Sequence[str], span: Span = None
) -> str:
    """Stacked bars: files handled per day, by outcome."""
    days = sorted(files_by_day)
    fig, ax = _figure()
    bottom = np.zeros(len(days))
    for outcome in outcomes:
        counts = np.array([files_by_day[d].get(outcome, 0) for d in days], dtype=float)
        if counts.any():
            ax.bar(
                days,
                counts,
                bottom=bottom,
                width=0.8,
                color=COLOURS[outcome],
                label=NAMES.get(outcome, outcome),
            )
            bottom += counts
    _dates(ax, days, span)
    ax.set_ylabel("files per day")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Files handled per day, by outcome")
    ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=4)
    ax.set_ylim(0, max(bottom.max(), 1) * 1.25)
    return _svg(fig)


@styled
def p_chart(
    verdicts_by_day: Mapping[date, tuple[int, int]], centre: float, centre_label: str, span: Span = None
) -> str:
    """The positive rate per day with binomial 3-sigma limits around ``centre`` for each day's n."""
    days = sorted(verdicts_by_day)
    n = np.array([verdicts_by_day[d][0] for d in days], dtype=float)
    rate = np.array([verdicts_by_day[d][1] for d in days], dtype=float) / n
    sigma = np.sqrt(centre * (1 - centre) / n)
    upper, lower = np.minimum(centre + 3 * sigma, 1), np.maximum(centre - 3 * sigma, 0)
    outside = (rate > upper) | (rate < lower)
    fig, ax = _figure()
    ax.axhline(centre, color="#444", lw=1.2, label=f"centre: {centre_label} ({100 * centre:.1f}%)")
    x = mdates.date2num(days)
    for limits, label in ((upper, "3-sigma limits for the day's number of films"), (lower, None)):
        ax.hlines(limits, x - 0.4, x + 0.4, color="#d62728", lw=1.2, ls="--", label=label)
    gap = np.diff(x, prepend=x[0]) > 1  # no line across days without films
    ax.plot(
        np.insert(x, np.flatnonzero(gap), np.nan),
        np.insert(rate, np.flatnonzero(gap), np.nan),
        "-",
        color=COLOURS["screened"],
        lw=1,
    )
    ax.plot(days, rate, "o", color=COLOURS["screened"], ms=5, label="positive rate of the day")
    if outside.any():
        ax.plot(
            np.array(days)[outside],
            rate[outside],
            "o",
            color="#d62728",
            ms=8,
            mfc="none",
            mew=2,
            label="outside the limits",
        )
    _dates(ax, days, span)
    ax.set_ylim(0, 1.15)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("positive films / films")
    ax.set_title("Positive rate per day (p-chart)")
    ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=2)
    return _svg(fig)


@styled
def p_distribution(
    recent: np.ndarray, reference: np.ndarray | None, reference_label: str, threshold: float | None
) -> str:
    """Histograms (share of films per bin of P) of this period against the reference."""
    bins = len(recent)
    edges = np.linspace(0, 1, bins + 1)
    fig, ax = _figure()
    width = 1 / bins
    ax.bar(
        edges[:-1],
        recent / max(recent.sum(), 1),
        width=width,
        align="edge",
        color=COLOURS["screened"],
        alpha=0.75,
        label=f"this period ({int(recent.sum())} films)",
    )
    if reference is not None and reference.sum():
        ax.step(
            edges,
            np.append(reference, reference[-1]) / reference.sum(),
            where="post",
            color="#222",
            lw=1.6,
            label=f"reference: {reference_label} ({int(reference.sum())} films)",
        )
    if threshold is not None:
        ax.axvline(threshold, color="#d62728", ls=":", lw=1.2, label=f"operating threshold {threshold:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("P(PNEUMONIA) as reported")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("share of films")
    ax.set_title("Distribution of P(PNEUMONIA): this period against the reference")
    ax.legend(loc="upper center", fontsize=8, frameon=False)
    return _svg(fig)


@styled
def refusal_rate(
    refused_by_day: Mapping[date, tuple[int, int]],
    reference: float | None,
    reference_label: str,
    span: Span = None,
) -> str:
    """The gate's share of refused films per day: (films refused, films the gate judged), films being
    distinct images (a film sent twice is one)."""
    days = sorted(refused_by_day)
    share = np.array([refused_by_day[d][0] / refused_by_day[d][1] for d in days])
    fig, ax = _figure()
    ax.bar(days, share, width=0.8, color=COLOURS["out_of_scope"], label="refused by the gate (out of scope)")
    for day, s, (k, n) in zip(days, share, (refused_by_day[d] for d in days), strict=True):
        ax.annotate(
            f"{k}/{n}",
            (mdates.date2num(day), s),
            ha="center",
            va="bottom",
            fontsize=7,
            xytext=(0, 2),
            textcoords="offset points",
        )
    if reference is not None:
        ax.axhline(reference, color="#444", lw=1.2, label=f"{reference_label} ({100 * reference:.1f}%)")
    _dates(ax, days, span)
    top = max(share.max(), reference or 0.0)
    ax.set_ylim(0, top * 1.3 if top > 0 else 0.05)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("films refused / films judged")
    ax.set_title("The gate's refusal rate per day")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return _svg(fig)


@styled
def horizontal_bars(
    rows: Mapping[str, Mapping[str, int]], stack: Sequence[str], title: str, xlabel: str
) -> str:
    """One bar per row (a failure kind, a worker, a destination), stacked by ``stack``."""
    names = list(rows)[::-1]  # the first at the top
    height = max(1.6, 0.9 + 0.32 * len(names))
    fig, ax = _figure(height=min(height, 9))
    left = np.zeros(len(names))
    for key in stack:
        counts = np.array([rows[name].get(key, 0) for name in names], dtype=float)
        if counts.any():
            ax.barh(
                [_short(n) for n in names],
                counts,
                left=left,
                color=COLOURS.get(key, "#7f7f7f"),
                label=NAMES.get(key, key),
            )
            left += counts
    for y, total in enumerate(left):
        ax.annotate(
            f"{int(total)}", (total, y), va="center", fontsize=8, xytext=(3, 0), textcoords="offset points"
        )
    ax.set_xlim(0, max(left.max(), 1) * 1.12)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if len(stack) > 1:
        fig.legend(loc="outside lower center", fontsize=8, frameon=False, ncols=len(stack))
    return _svg(fig)


@styled
def hourly(files_by_hour: Mapping[datetime, int]) -> str:
    """Files handled per hour over the period; beyond two days, also the average by hour of the day."""
    hours = sorted(files_by_hour)
    n_hours = int((hours[-1] - hours[0]).total_seconds() // 3600) + 1
    long = n_hours > 48
    fig = Figure(figsize=(WIDTH, HEIGHT * (1.9 if long else 1)), dpi=100, layout="constrained")
    FigureCanvasSVG(fig)
    axes = [_style(ax) for ax in fig.subplots(2 if long else 1, 1, squeeze=False)[:, 0]]
    ax = axes[0]
    if long:  # every hour, idle ones as zero
        grid = [hours[0] + timedelta(hours=i) for i in range(n_hours + 1)]
        counts = [files_by_hour.get(h, 0) for h in grid]
        ax.fill_between(grid, counts, step="post", color="#4c72b0", lw=0.8)
    else:
        counts = [files_by_hour[h] for h in hours]
        ax.bar(hours, counts, width=timedelta(minutes=50), align="edge", color="#4c72b0")
    _dates(ax, hours)
    ax.set_ylabel("files per hour")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Images handled per hour (UTC)")
    if long:
        by_hour = np.zeros(24)
        for hour, n in files_by_hour.items():
            by_hour[hour.hour] += n
        days = n_hours / 24
        axes[1].bar(range(24), by_hour / days, color="#4c72b0")
        axes[1].set_xticks(range(0, 24, 2))
        axes[1].set_xlim(-0.6, 23.6)
        axes[1].set_xlabel("hour of the day (UTC)")
        axes[1].set_ylabel("files, average")
        axes[1].set_title(f"By hour of the day: the average over {days:.0f} days")
    return _svg(fig)


def _figure(height: float = HEIGHT) -> tuple[Figure, Any]:
    fig = Figure(figsize=(WIDTH, height), dpi=100, layout="constrained")
    FigureCanvasSVG(fig)
    return fig, _style(fig.add_subplot())


def _style(ax: Any) -> Any:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e5e5e5", lw=0.8)
    ax.set_axisbelow(True)
    return ax


def _dates(ax: Any, days: Sequence[date | datetime], span: Span = None) -> None:
    """A time axis that reads well for one day or for a year: whole days for daily charts (one
    tick per day up to two weeks), hours and days for the hourly one."""
    first, last = mdates.date2num(min(days)), mdates.date2num(max(days))
    if span is not None:  # the whole period, days without data included
        first, last = min(first, mdates.date2num(span[0])), max(last, mdates.date2num(span[1]))
    if isinstance(days[0], datetime):  # hourly
        locator: Any = mdates.AutoDateLocator(minticks=3, maxticks=10)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_xlim(first - 1 / 24, last + 2 / 24)
    else:
        n_days = int(last - first) + 1
        if n_days <= 60:
            locator = mdates.DayLocator(interval=max(1, -(-n_days // 14)))
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%d %b"))
        else:
            locator = mdates.AutoDateLocator(minticks=3, maxticks=12)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        # A week at least, ending on the last day: one day is not a bar across the page.
        ax.set_xlim(min(first, last - 6) - 0.7, last + 0.7)
    ax.xaxis.set_major_locator(locator)
    ax.set_xlabel("UTC")


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _svg(fig: Figure) -> str:
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    return _PROLOG.sub("", out.getvalue(), count=1).strip()
