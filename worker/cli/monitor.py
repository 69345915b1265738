"""What ``report --format html`` and ``report drift`` put together: the samples they compare,
read from the database and the model's site baseline, and what a drift check sends on
(a Prometheus textfile, a webhook). The commands themselves are in ``worker/cli/db.py``."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from worker.config import Settings
from worker.db.window import read_sample
from worker.drift import periods
from worker.drift.check import Drift, compare
from worker.drift.output import notification, write_metrics
from worker.drift.sample import Sample, load_baseline, model_hashes
from worker.errors import ConfigError, UsageError

log = logging.getLogger("worker")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def reference_sample(
    engine: Engine, settings: Settings, spec: str, recent: periods.Period, *, overlap: bool = False
) -> Sample:
    """The reference ``spec`` names: the site baseline beside the model, or a period of the
    database (``ConfigError``/``UsageError`` when it cannot be had)."""
    period = periods.reference(spec, recent, overlap=overlap)
    if period is None:
        model = settings.model
        expected = model.expected_sha256() if not model.trust else ""
        sample = Sample.of_baseline(load_baseline(model.path, expected))
        # A bundle exported from the baseline's learner screens as it does (docs/runtime.md):
        # its results are not "a new model".
        same = model_hashes(model.path, expected) if expected else set()
        return dataclasses.replace(sample, model_sha256s=sample.model_sha256s | same)
    return read_sample(engine, period.start, period.end, period.label)


def drift_check(engine: Engine, settings: Settings, until: datetime) -> tuple[Drift, dict[str, Any]]:
    """The ``[drift]`` window ending at ``until`` against its reference, and the window's description."""
    recent_period = periods.window(settings.drift.window, until)
    reference = reference_sample(engine, settings, settings.drift.reference, recent_period)
    recent = read_sample(engine, recent_period.start, recent_period.end, recent_period.label)
    drift = compare(reference, recent, alpha=settings.drift.alpha, min_films=settings.drift.min_films)
    window = {
        "label": recent_period.label,
        "since": recent_period.start,
        "until": recent_period.end,
        "reference_spec": settings.drift.reference,
    }
    return drift, window


def send_on(
    drift: Drift, window: dict[str, Any], settings: Settings, metrics_file: Path | None, now: datetime
) -> None:
    """The figures into ``metrics_file``, and a ``drift`` notification when a figure alarms."""
    if metrics_file is not None:
        write_metrics(drift, metrics_file, now)
    if drift.alarms:
        from worker.notify import notify_now

        if not notify_now(settings, "drift", notification(drift, window)):
            log.warning("the drift notification was not delivered to every webhook (see the lines above)")


def dashboard_html(
    engine: Engine, settings: Settings, since: datetime | None, until: datetime, database: str
) -> str:
    """The dashboard page of the period, its charts compared with ``[drift] reference``."""
    from worker.db.activity import read_activity
    from worker.db.dashboard import Reference, page  # matplotlib: only for the page

    activity = read_activity(engine, since, until)
    shown = periods.Period(since or EPOCH, until, "this period")
    recent = read_sample(engine, since, until, "this period")
    spec = settings.drift.reference
    try:
        sample = reference_sample(engine, settings, spec, shown, overlap=True)
        reference = Reference(sample.label, sample)
    except (ConfigError, UsageError) as exc:
        reference = Reference(spec, None, why=str(exc))
    return page(
        activity, recent, reference, since=since, until=until, database=database, generated=datetime.now(UTC)
    )
