"""A report as an aligned text table, as CSV, or as JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from decimal import Decimal
from typing import Any

from worker.db.report import Report

FORMATS = ("table", "csv", "json")


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return render_json(report)
    if fmt == "csv":
        return render_csv(report)
    return render_table(report)


def render_json(report: Report) -> str:
    data: dict[str, Any] = {"since": report.since, "until": report.until}
    if report.totals:
        data["totals"] = report.totals
    for section in report.sections:
        data[section.name] = [dict(zip(section.columns, row, strict=True)) for row in section.rows]
    return json.dumps(data, indent=2, default=_json_value)


def render_csv(report: Report) -> str:
    """One section: a plain table. Several: long form ``section,key,metric,value``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if not report.totals and len(report.sections) == 1:
        section = report.sections[0]
        writer.writerow(section.columns)
        writer.writerows([[_text(v, iso=True) for v in row] for row in section.rows])
        return out.getvalue()
    writer.writerow(["section", "key", "metric", "value"])
    for metric, value in report.totals.items():
        writer.writerow(["totals", "", metric, _text(value, iso=True)])
    for section in report.sections:
        for row in section.rows:
            key = "/".join(_text(v, iso=True) for v in row[: section.keys])  # host/worker_id
            for metric, value in zip(section.columns[section.keys :], row[section.keys :], strict=True):
                writer.writerow([section.name, key, metric, _text(value, iso=True)])
    return out.getvalue()


def render_table(report: Report) -> str:
    window = f"since {_text(report.since)}" if report.since else "all time"
    lines = [f"{report.title}, {window} (until {_text(report.until)}, times in UTC)"]
    t = report.totals
    if t and "screened" not in t:  # another report's totals (studies): "name value" pairs
        lines += ["", "   ".join(f"{k.replace('_', ' ')} {_text(v)}" for k, v in t.items())]
    elif t:  # the summary's
        rate = f"{t['positive_rate']:.1%}" if t["positive_rate"] is not None else "n/a"
        lines += [
            "",
            f"Files handled   {t['files']:>8}   screened {t['screened']}, duplicates {t['duplicates']}, "
            f"out of scope {t.get('out_of_scope', 0)}, failed {t['failed']}",
            f"New results     {t['results']:>8}   positive {t['positives']} ({rate})",
        ]
        if t["first_file_at"] is not None:
            lines.append(f"Activity        {_text(t['first_file_at'])} .. {_text(t['last_file_at'])}")
    for section in report.sections:
        lines += ["", f"{section.title}:"]
        lines += _aligned(section) if section.rows else ["  (none)"]
    return "\n".join(lines)


def _aligned(section: Any) -> list[str]:
    """The section's rows under their column names, without the columns empty in every row (a
    PNG's DICOM fields, a rate nobody could have)."""
    texts = [[_text(v) for v in row] for row in section.rows]
    shown = [i for i in range(len(section.columns)) if any(row[i] for row in texts)]
    cells = [[section.columns[i] for i in shown], *[[row[i] for i in shown] for row in texts]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(shown))]
    return [
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]


def _text(value: Any, *, iso: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat() if iso else value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, float):
        return plain(value, None if iso else 4)
    return str(value)


def plain(value: float, digits: int | None = 4) -> str:
    """A number as a person writes it, never in scientific notation: ``digits`` significant
    digits, whole numbers from there up (``0.7688``, ``26.01``, ``0.00012``, ``139512``), or with
    None every digit of its shortest form (``0.00001234``, ``2.0``: CSV's)."""
    if not math.isfinite(value):
        return str(value)
    if digits is None:
        return format(Decimal(repr(value)), "f")
    if abs(value) >= 10**digits:
        return f"{value:.0f}"
    text = format(Decimal(f"{value:.{digits}g}"), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
