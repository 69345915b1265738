"""The results database for the commands: its schema (``db upgrade``, ``current``,
``downgrade``), the reports (``report`` and its subcommands), the dashboard page and the drift
check, and what a report suggests to run next.

The app layer's half that reads and migrates the database, beside ``worker/app.py`` (which
builds the parts that screen). The CLI (``worker/cli/db.py``) parses the options, calls these
and prints what they return; it imports neither SQLAlchemy nor ``worker.db``. Errors are the
project's own: ``TransientError`` naming the database (without its password) when it cannot
be reached, ``ConfigError`` when it is not at the newest schema.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, make_url, select

from worker.app import open_database, open_store
from worker.config import PROJECT_ROOT, Settings
from worker.db import migrate, pulls
from worker.db.engine import make_engine, reader, safe_url, sqlite_file
from worker.db.errors import database_errors
from worker.db.render import FORMATS as FORMATS  # the report formats, for the CLI's choices
from worker.db.render import render
from worker.db.report import deliveries, flagged, flagged_table, studies, summary
from worker.db.schema import audit_events
from worker.db.window import read_sample
from worker.drift import periods
from worker.drift.check import Drift, compare
from worker.drift.output import as_json, as_table, notification, write_metrics
from worker.drift.sample import Sample, load_baseline, model_hashes
from worker.errors import ConfigError, TransientError, UsageError, XrayScreenError

log = logging.getLogger("worker")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# report's subcommands
REPORTS = {"flagged": flagged, "studies": studies, "deliveries": deliveries, "pulls": pulls.report}


@contextmanager
def database(url: str, *, create: bool = False, at_head: bool = False) -> Iterator[Engine]:
    """The database at ``url``; any database problem becomes a one-line error naming the
    database (without its password), which ``worker.cli.common.Commands`` maps to an exit code.

    ``create``: a missing SQLite file and its folder are made (``db upgrade``). ``at_head``:
    refuse a database behind the newest schema, except a SQLite file that does not exist yet,
    which is created at it (``worker.app.open_database``, as ``scan`` does).
    """
    engine = open_database(url) if at_head else None  # its errors name the database already
    try:
        with database_errors():
            if engine is None:
                engine = make_engine(url, create=create)
            yield engine
    except TransientError as exc:
        raise TransientError(f"{safe_url(url)}: {exc}") from None
    finally:
        if engine is not None:
            engine.dispose()


def database_check(settings: Settings) -> tuple[str, str | None]:
    """``healthcheck``'s line for the database, and the problem (None: none). Creates nothing."""
    text = f"database {safe_url(settings.database.url)} reachable and at head"
    try:
        open_store(settings, create=False).close()
    except XrayScreenError as exc:
        return text, str(exc)
    return text, None


# -- the schema ----------------------------------------------------------------------


def upgrade_database(url: str, revision: str = "head") -> str:
    """``db upgrade``: create the database if need be and bring it to ``revision``; the line
    that says what changed."""
    with database(url, create=True) as engine:
        before = migrate.current_revision(engine)
        migrate.upgrade(engine, revision)
        after = migrate.current_revision(engine)
        where = safe_url(engine.url)
    mark = " (head)" if after == migrate.head_revision() else ""
    if before == after:
        return f"{where}: already at {after}{mark}"
    return f"{where}: upgraded from {before or 'none'} to {after}{mark}"


def database_revision(url: str, *, check: bool = False) -> str:
    """``db current``: the line naming the schema revision and whether it is the newest;
    with ``check``, ``ConfigError`` (that line) unless it is."""
    with database(url) as engine:
        revision = migrate.current_revision(engine)
        where = safe_url(engine.url)
    head = migrate.head_revision()
    if revision == head:
        return f"{where}: {revision} (head)"
    message = f"{where}: {revision or 'none (empty)'}, expected {head}: run `xray-worker db upgrade`"
    if check:
        raise ConfigError(message)
    return message


def downgrade_database(url: str, revision: str, *, confirm: Callable[[str], object] | None = None) -> str:
    """``db downgrade``: back to ``revision``, once ``confirm`` (given the question; None: no
    question) lets it go on (it raises to stop); the line that says what changed."""
    with database(url) as engine:
        where = safe_url(engine.url)
        before = migrate.current_revision(engine)
        if confirm is not None:
            confirm(f"Downgrade {where} from {before} to {revision}? Data may be lost")
        migrate.downgrade(engine, revision)
        after = migrate.current_revision(engine)
    return f"{where}: downgraded from {before or 'none'} to {after or 'none (empty)'}"


# -- the reports ---------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    """How the command was called, for the command lines a report suggests: with this run's
    ``--config`` and ``--db``."""

    config_path: Path | None = None
    db: str | None = None

    def command(self, *args: str) -> str:
        """An xray-worker command line to suggest."""
        words = [program()]
        if self.config_path:
            words += ["--config", str(self.config_path)]
        words += args
        if self.db:
            words += ["--db", safe_url(self.db)]
        return " ".join(shlex.quote(word) for word in words)


def report_summary(url: str, since: datetime | None, fmt: str, *, brief: bool, invocation: Invocation) -> str:
    """``report``: counts, positive rate, failures, slowest hours, models (``brief``: only the
    counts and labels); as a table, followed by what to do next when there is nothing to show
    (or, ``brief``, where the database is and how to query it)."""
    with database(url, at_head=True) as engine:
        result = summary(engine, since)
        empty = not (result.totals["files"] or result.totals["results"])
        stored = not empty or (since is not None and _anything_stored(engine))
        where = engine.url
    result = dataclasses.replace(result, title=f"{result.title} of {safe_url(where)}")
    if fmt == "table" and not stored:
        result = dataclasses.replace(result, sections=[])  # six empty tables say less than one line
    elif brief:
        result = dataclasses.replace(result, sections=[s for s in result.sections if s.name == "labels"])
    text = render(result, fmt)
    if fmt != "table":
        return text
    if not stored:
        lines = _nothing_yet(invocation)
    elif empty:
        everything = invocation.command("report", "--since", "all")
        lines = [f"Nothing handled in this window; the database has earlier files: {everything}"]
    elif brief:
        lines = _how_to_look(where, invocation)
    else:
        lines = []
    return text + ("\n\n" + "\n".join(lines) if lines else "")


def report_text(url: str, name: str, since: datetime | None, fmt: str, *, all_columns: bool = False) -> str:
    """A report subcommand's output: ``flagged`` (as a table, the columns that fit a terminal
    unless ``all_columns``), ``studies``, ``deliveries`` or ``pulls``, of the database at head."""
    with database(url, at_head=True) as engine:
        result = REPORTS[name](engine, since)
    if name == "flagged" and fmt == "table" and not all_columns:
        result = flagged_table(result)
    return render(result, fmt)


def dashboard_page(settings: Settings, since: datetime | None) -> str:
    """``report --format html``: the dashboard page of the period until now, its charts
    compared with ``[drift] reference``."""
    until = datetime.now(UTC)
    with database(settings.database.url, at_head=True) as engine:
        return dashboard_html(engine, settings, since, until, safe_url(engine.url))


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


# -- drift ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftReport:
    """``report drift``'s answer: the figures and the window they describe."""

    drift: Drift
    window: dict[str, Any]

    @property
    def alarms(self) -> bool:
        return bool(self.drift.alarms)

    def text(self, fmt: str) -> str:
        """As a table or as JSON."""
        return (
            as_json(self.drift, self.window) if fmt == "json" else as_table(self.drift, self.window["label"])
        )

    def send(self, settings: Settings, metrics_file: Path | None, now: datetime) -> None:
        """The figures into ``metrics_file``, and a ``drift`` notification when a figure alarms."""
        send_on(self.drift, self.window, settings, metrics_file, now)


def check_drift(settings: Settings, until: datetime) -> DriftReport:
    """``report drift``: the ``[drift]`` window ending at ``until`` against its reference."""
    with database(settings.database.url, at_head=True) as engine:
        return DriftReport(*drift_check(engine, settings, until))


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


# -- guiding a new user --------------------------------------------------------------


def _anything_stored(engine: Engine) -> bool:
    """Whether any file was ever handled (a report's window may just be empty)."""
    with database_errors(), reader(engine).connect() as conn:
        return conn.execute(select(audit_events.c.id).limit(1)).first() is not None


def _nothing_yet(invocation: Invocation) -> list[str]:
    samples = PROJECT_ROOT / "samples"
    if not samples.is_dir():
        return [
            f"Nothing screened yet: screen a folder of X-rays with {invocation.command('scan', 'FOLDER')}"
        ]
    return [
        "Nothing screened yet. Screen the six sample X-rays into this database, then report again:",
        f"  {invocation.command('scan', shown(samples) + '/')}",
        f"  {invocation.command('report', '--brief')}",
    ]


def _how_to_look(url: Any, invocation: Invocation) -> list[str]:
    """Where the database is, and a first query to run on it."""
    query = "SELECT * FROM report_daily_counts"
    path = sqlite_file(url)
    if path is not None:
        where, shell = (
            f"the SQLite file {shown(path)}",
            f"sqlite3 -readonly -box {shlex.quote(shown(path))} '{query}'",
        )
    else:
        libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=True)
        where, shell = f"PostgreSQL, {libpq}", f"psql {shlex.quote(libpq)} -c '{query}'"
    docs = PROJECT_ROOT / "docs" / "reporting.md"
    return [
        f"The results are in {where}. To look at them:",
        f"  {shell}",
        f"  {invocation.command('report', 'flagged')}      # the positive files, with their paths",
        *([f"  tables, views and more queries: {shown(docs)}"] if docs.is_file() else []),
    ]


def program() -> str:
    """How this program was started (``.venv/bin/xray-worker``), or ``xray-worker`` when on PATH."""
    argv0 = Path(sys.argv[0])
    if argv0.name != "xray-worker":
        return "xray-worker"
    on_path = shutil.which("xray-worker")
    if on_path and Path(on_path).resolve() == argv0.resolve():
        return "xray-worker"
    return shown(argv0)


def shown(path: Path) -> str:
    """A path as a user would type it here: relative below the current folder, else absolute."""
    absolute = path.absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)
