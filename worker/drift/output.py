"""A drift check as a person reads it (a table), as a program reads it (JSON), as Prometheus
reads it (a textfile for node_exporter's textfile collector), and as a webhook says it."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from worker.drift.check import TOO_FEW, Drift
from worker.strict_json import finite

COLUMNS = ("figure", "reference", "recent", "change", "limit", "verdict")


def as_table(drift: Drift, window: str) -> str:
    """The header, one line per figure, and the verdict."""
    ref, rec = drift.reference, drift.recent
    lines = [
        f"xray-screen drift: {window} ({rec.results} films with a verdict, {rec.refused} refused)",
        f"  against {ref.label} ({ref.results} films with a verdict, {ref.refused} refused)",
        f"  limits: p < {drift.alpha:g} per figure and a change above its floor (docs/drift.md); "
        f"a figure needs {drift.min_films} films on each side",
    ]
    if rec.models:
        lines.append(f"  models in the window: {', '.join(rec.models)}")
    if ref.model_sha256s and rec.model_sha256s and not rec.model_sha256s <= ref.model_sha256s:
        lines.append(
            f"  NOTE: the reference's verdicts come from {', '.join(ref.models)}: "
            "a new model is a change of its own"
        )
    rows = [COLUMNS] + [
        (f.title, f.reference, f.recent, f.change, f.limit_text, f.status) for f in drift.figures
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines.append("")
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines += ["", verdict_line(drift)]
    return "\n".join(lines)


def verdict_line(drift: Drift) -> str:
    if drift.alarms:
        names = "; ".join(f.title for f in drift.alarms)
        return f"DRIFT: {len(drift.alarms)} of {len(drift.figures)} figures beyond their limits: {names}"
    if not drift.judged:
        return (
            f"too few films to judge: fewer than {drift.min_films} in the window or the reference "
            "(no figure judged)"
        )
    unjudged = [f.title for f in drift.figures if f.status == TOO_FEW]
    return "no drift: every figure judged is within its limits" + (
        f" (too few films for: {'; '.join(unjudged)})" if unjudged else ""
    )


def as_dict(drift: Drift, window: dict[str, Any]) -> dict[str, Any]:
    """Everything the table says, with the numbers behind it."""
    ref, rec = drift.reference, drift.recent
    return {
        "window": {**window, "films": rec.results, "refused": rec.refused, "models": list(rec.models)},
        "reference": {
            "label": ref.label,
            "films": ref.results,
            "refused": ref.refused,
            "models": list(ref.models),
        },
        "alpha": drift.alpha,
        "min_films": drift.min_films,
        "judged": drift.judged,
        "alarms": [f.name for f in drift.alarms],
        "verdict": verdict_line(drift),
        "figures": [
            {
                "figure": f.name,
                "title": f.title,
                "status": f.status,
                "reference": f.reference,
                "recent": f.recent,
                "change": f.value,
                "limit": f.limit,
                "p_value": f.p_value,
                **f.details,
            }
            for f in drift.figures
        ],
    }


def as_json(drift: Drift, window: dict[str, Any]) -> str:
    return json.dumps(finite(as_dict(drift, window)), indent=2, default=_iso)


def write_metrics(drift: Drift, path: Path, now: datetime) -> None:
    """The figures as Prometheus gauges (``xray_screen_drift_*``), written atomically with
    prometheus_client's ``write_to_textfile`` from a registry of their own."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
        return Gauge(f"xray_screen_drift_{name}", doc, labels, registry=registry)

    alarm = gauge("alarm", "1 when the figure is beyond its limits (docs/drift.md)", ("figure",))
    judged = gauge("judged", "1 when the figure had films enough on both sides to be judged", ("figure",))
    change = gauge(
        "change", "The figure's change: a rate difference, KS distance or TV distance", ("figure",)
    )
    limit = gauge("limit", "The largest change that is no alarm", ("figure",))
    p_value = gauge("p_value", "The figure's test p-value", ("figure",))
    for f in drift.figures:
        alarm.labels(f.name).set(int(f.alarm))
        judged.labels(f.name).set(int(f.status != TOO_FEW))
        for g, value in ((change, f.value), (limit, f.limit), (p_value, f.p_value)):
            if value is not None:
                g.labels(f.name).set(value)
    films = gauge("films", "Films with a verdict", ("sample",))
    refused = gauge("refused", "Films the gate refused", ("sample",))
    positive_rate = gauge("positive_rate", "Share of films with a verdict that were positive", ("sample",))
    refusal_rate = gauge("refusal_rate", "Share of the films the gate judged that it refused", ("sample",))
    for side, sample in (("reference", drift.reference), ("recent", drift.recent)):
        films.labels(side).set(sample.results)
        refused.labels(side).set(sample.refused)
        for g, value in ((positive_rate, sample.positive_rate), (refusal_rate, sample.refusal_rate)):
            if value is not None:
                g.labels(side).set(value)
    gauge("alarms", "Figures beyond their limits", ()).set(len(drift.alarms))
    gauge("last_run_timestamp_seconds", "When the drift check ran", ()).set(now.timestamp())
    write_to_textfile(str(path), registry)


def notification(drift: Drift, window: dict[str, Any]) -> dict[str, Any]:
    """What a ``drift`` webhook says: the verdict and the figures beyond their limits."""
    data = as_dict(drift, window)
    return {
        "verdict": data["verdict"],
        "window": data["window"],
        "reference": data["reference"],
        "alarms": [f for f in data["figures"] if f["status"] == "ALARM"],
    }


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
