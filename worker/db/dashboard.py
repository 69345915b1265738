"""The dashboard: one self-contained HTML page of a period's screening, for a radiology lead.

``xray-worker report --format html --out FILE``. Every chart is inline SVG
(``worker/db/plots.py``); there is no script, no style sheet, font or image to fetch, and a
Content-Security-Policy that forbids the page any network access at all. A section with
nothing to show says so in words.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import date, datetime

from worker.db import plots
from worker.db.activity import OUTCOMES, Activity
from worker.drift.sample import Sample

TITLE = "xray-screen dashboard"
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
OUTBOX_STATUSES = ("pending", "delivered", "committed", "failed")
FILMS_AND_FILES = (
    "A film is one image, however many files carry it: the same image dropped into the inbox "
    "after a scan is two files (the second a duplicate) of one film. The rates count films; the "
    "volume, failures, hours and workers count files, as xray-worker report does."
)
CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b;
       margin: 0 auto; max-width: 980px; padding: 24px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 19px; margin: 34px 0 4px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 10px 0 0; }
dl.facts dt { color: #555; } dl.facts dd { margin: 0; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin: 20px 0 0; }
.tile { border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; flex: 1 1 0; min-width: 120px; }
.tile b { display: block; font-size: 24px; } .tile span { color: #555; font-size: 13px; }
p.note { color: #444; margin: 4px 0 8px; }
p.empty { color: #555; font-style: italic; background: #f6f6f6; padding: 18px; border-radius: 6px; }
.plot svg { width: 100%; height: auto; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
td, th { border-bottom: 1px solid #e5e5e5; padding: 3px 10px 3px 0; text-align: left; }
td.n { text-align: right; }
footer { margin-top: 40px; color: #666; font-size: 12px; }
"""


@dataclass(frozen=True)
class Reference:
    """What the p-chart's centre line and the P histogram are compared with."""

    label: str  # "site profile kermany-test", "2026-11-01..2026-11-30"
    sample: Sample | None  # None: no reference could be read (``why``)
    why: str = ""


def page(
    activity: Activity,
    recent: Sample,
    reference: Reference,
    *,
    since: datetime | None,
    until: datetime,
    database: str,
    generated: datetime,
) -> str:
    """The whole page."""
    span = (since.date(), until.date()) if since is not None else None
    sections = [
        _volume(activity, span),
        _positive_rate(activity, recent, reference, span),
        _distribution(activity, recent, reference),
        _refusals(activity, reference, span),
        _failures(activity),
        _hourly(activity),
        _workers(activity),
        _deliveries(activity),
    ]
    period = f"{_when(since) if since else 'the first record'} to {_when(until)} (UTC)"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{TITLE}: {_e(period)}</title>",
            f"<style>{CSS}</style></head><body>",
            f"<header><h1>{TITLE}</h1>",
            '<dl class="facts">',
            f"<dt>Period</dt><dd>{_e(period)}</dd>",
            f"<dt>Model</dt><dd>{_models(activity)}</dd>",
            f"<dt>Reference</dt><dd>{_e(_reference_line(reference))}</dd>",
            f"<dt>Database</dt><dd><code>{_e(database)}</code></dd>",
            "</dl></header>",
            _tiles(activity, recent),
            *sections,
            f"<footer>Generated {_when(generated)} UTC by <code>xray-worker report --format html</code>. "
            "A screening aid for trained staff, not a diagnosis. All times UTC. "
            "Figures and limits: docs/reporting.md and docs/drift.md.</footer>",
            "</body></html>",
        ]
    )


# -- sections -----------------------------------------------------------------------------


def _section(key: str, title: str, note: str, body: str) -> str:
    return (
        f'<section id="{key}"><h2>{_e(title)}</h2><p class="note">{_e(note)}</p>'
        f'<div class="plot" data-section="{key}">{body}</div></section>'
    )


def _empty(text: str) -> str:
    return f'<p class="empty">{_e(text)}</p>'


def _volume(a: Activity, span: plots.Span) -> str:
    body = (
        plots.daily_volume(a.files_by_day, OUTCOMES, span)
        if a.files_by_day
        else _empty("No files were handled in this period.")
    )
    return _section(
        "volume",
        "Daily volume by outcome",
        "Every file handled, by what became of it: screened (a verdict), duplicate (content already "
        "screened: same verdict), out of scope (refused by the gate) or failed. Files, not films: "
        "a film sent twice counts twice here.",
        body,
    )


def _positive_rate(a: Activity, recent: Sample, ref: Reference, span: plots.Span) -> str:
    if not a.verdicts_by_day:
        body = _empty("No film got a verdict in this period, so there is no positive rate to chart.")
    elif ref.sample is not None and ref.sample.positive_rate is not None:
        body = plots.p_chart(
            a.verdicts_by_day, ref.sample.positive_rate, f"reference rate, {ref.label}", span
        )
    else:  # no reference: centred on this period's own rate
        body = plots.p_chart(
            a.verdicts_by_day, recent.positive_rate or 0.0, "this period's overall rate", span
        )
        why = f"The centre line is this period's overall rate: no reference ({ref.why})"
        body += f'<p class="note">{_e(why)}</p>'
    return _section(
        "positive-rate",
        "Positive rate per day, with control limits",
        "Each point is one day's share of films flagged positive. The centre line is the reference rate; "
        "the dashed lines are binomial 3-sigma limits for that day's number of films: a point outside "
        "them happens about 3 times in 1,000 days when nothing has changed.",
        body,
    )


def _distribution(a: Activity, recent: Sample, ref: Reference) -> str:
    if not recent.results:
        body = _empty("No film got a verdict in this period, so there is no distribution of P to show.")
    else:
        reference = ref.sample.p_histogram if ref.sample is not None and ref.sample.results else None
        threshold = a.models[0][4] if a.models else None
        body = plots.p_distribution(recent.p_histogram, reference, ref.label, threshold)
        if reference is None:
            body += f'<p class="note">No reference to compare with: {_e(ref.why)}</p>'
    return _section(
        "p-distribution",
        "Distribution of P(PNEUMONIA)",
        "The model's probability of pneumonia for each film with a verdict, against the reference "
        "(bars: this period; line: the reference). A shift means the films, or the model's view of "
        "them, have changed: see docs/drift.md.",
        body,
    )


def _refusals(a: Activity, ref: Reference, span: plots.Span) -> str:
    days = sorted(set(a.verdicts_by_day) | set(a.refused_by_day))
    per_day = {
        d: (a.refused_by_day.get(d, 0), a.refused_by_day.get(d, 0) + a.verdicts_by_day.get(d, (0, 0))[0])
        for d in days
    }
    per_day = {d: v for d, v in per_day.items() if v[1]}
    if not per_day:
        body = _empty("The gate judged no film in this period.")
    else:
        rate = ref.sample.refusal_rate if ref.sample is not None else None
        body = plots.refusal_rate(per_day, rate, f"reference, {ref.label}", span)
    return _section(
        "refusals",
        "The gate's refusal rate",
        "Share of the films the gate judged that it refused as out of scope (another modality, body "
        "part or view, or unlike the films the model was trained on). Films, not files: a film sent "
        "twice counts once. Labels: films refused/films judged.",
        body,
    )


def _failures(a: Activity) -> str:
    if not a.failures:
        body = _empty("No file failed in this period.")
    else:
        rows = {kind: {"failed": n} for kind, n, _ in a.failures}
        body = plots.horizontal_bars(rows, ["failed"], "Failed files by kind of reason", "files")
        body += _table(
            ("kind", "files", "an example reason"), [(k, n, ex) for k, n, ex in a.failures], numeric=(1,)
        )
    return _section(
        "failures",
        "Failures by reason",
        "Files that could not be screened, grouped by the kind of reason (the audit trail keeps each "
        "file's full reason). Their files are in failed/ with an .error.json beside them.",
        body,
    )


def _hourly(a: Activity) -> str:
    if not a.files_by_hour:
        body = _empty("No files were handled in this period.")
    else:
        body = plots.hourly(a.files_by_hour)
        peak = max(a.files_by_hour, key=lambda h: a.files_by_hour[h])
        body += f'<p class="note">Busiest hour: {_when(peak)} with {a.files_by_hour[peak]} files.</p>'
    return _section("hourly", "Images per hour", "Files handled in each hour of the period (UTC).", body)


def _workers(a: Activity) -> str:
    if not a.workers:
        body = _empty("No worker handled a file in this period.")
    else:
        order = dict(sorted(a.workers.items(), key=lambda kv: -sum(kv[1].values())))
        body = plots.horizontal_bars(order, OUTCOMES, "Files per worker (host / worker id)", "files")
    return _section(
        "workers",
        "Work per worker",
        "Files handled by each worker (the daemon's host name and worker id; 'scan' for archive "
        "scans), by outcome.",
        body,
    )


def _deliveries(a: Activity) -> str:
    if not a.deliveries:
        body = _empty(
            "No PACS objects were queued in this period (no [pacs] destinations configured, "
            "or no DICOM screened)."
        )
    else:
        body = plots.horizontal_bars(
            a.deliveries, OUTBOX_STATUSES, "Objects per PACS destination and status", "objects"
        )
    return _section(
        "deliveries",
        "Delivery status (PACS)",
        "Structured reports and key images queued for each PACS destination in this period: pending "
        "(waiting or being retried), delivered, committed (the PACS confirmed it holds them) or failed. "
        "xray-worker report deliveries lists the errors.",
        body,
    )


# -- header parts -------------------------------------------------------------------------


def _tiles(a: Activity, recent: Sample) -> str:
    """The period in five numbers. Rates count films, the rest files, and each tile says which
    (the volume chart and ``xray-worker report`` count files): see ``FILMS_AND_FILES``."""

    def files(*outcomes: str) -> int:  # none named: every outcome
        return sum(n for v in a.files_by_day.values() for o, n in v.items() if o in outcomes or not outcomes)

    rate = f"{100 * recent.positive_rate:.1f}%" if recent.positive_rate is not None else "n/a"
    refusal = f"{100 * recent.refusal_rate:.1f}%" if recent.refusal_rate is not None else "n/a"
    tiles = [
        (f"{files()}", "files handled"),
        (f"{recent.results}", f"films with a verdict, in {files('screened', 'duplicate')} files"),
        (rate, f"positive ({recent.positives} films)"),
        (refusal, f"refused by the gate: {recent.refused} films, in {files('out_of_scope')} files"),
        (f"{files('failed')}", "files failed"),
    ]
    return (
        '<div class="tiles">'
        + "".join(f'<div class="tile"><b>{_e(v)}</b><span>{_e(t)}</span></div>' for v, t in tiles)
        + f'</div><p class="note">{_e(FILMS_AND_FILES)}</p>'
    )


def _models(a: Activity) -> str:
    if not a.models:
        return "no results in this period"
    return "; ".join(
        f"{_e(name)} {_e(version)} (<code>{_e(sha[:12])}</code>): {n} results"
        for name, version, sha, n, _ in a.models
    )


def _reference_line(ref: Reference) -> str:
    if ref.sample is None:
        return f"none ({ref.why})"
    s = ref.sample
    rate = f"{100 * s.positive_rate:.1f}% positive" if s.positive_rate is not None else "no verdicts"
    return f"{ref.label}: {s.results} films with a verdict, {rate}"


def _table(columns: tuple[str, ...], rows: list[tuple], numeric: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=n' if i in numeric else ''}>{_e(str(v))}</td>" for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _when(moment: datetime | date) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if isinstance(moment, datetime) else moment.isoformat()


def _e(text: str) -> str:
    return html.escape(text, quote=True)
