"""Settings -> the parts: the one place that knows how a Predictor, a Store, a Daemon or a
Scanner is built from a ``Settings`` object.

The CLI only parses options into settings and calls these builders. They raise the
project's own errors (``ConfigError``, ``ModelError``: the process cannot start;
``TransientError``: try again later), which ``worker.cli.common`` turns into exit codes in
one place. Heavy imports (torch, fastai, Ray) happen inside the builders, so ``--help`` and
``db`` commands stay fast.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from worker import exitcodes
from worker.config import Settings
from worker.errors import ClusterError, ConfigError, TransientError, UsageError

if TYPE_CHECKING:  # what the builders return; each is imported where it is built
    from sqlalchemy import Engine

    from worker.daemon import Daemon
    from worker.db.store import Store
    from worker.decode import Limits
    from worker.explain.heatmaps import Heatmapper
    from worker.metrics.monitoring import Monitoring
    from worker.metrics.textfile import ScanSummary
    from worker.model.predictor import Predictor
    from worker.pipeline import ports
    from worker.pipeline.commit import Outputs
    from worker.pipeline.gate import Gate
    from worker.pull.run import Puller, PullSummary
    from worker.runtime.faults import Faults
    from worker.scan.local import Scanner
    from worker.scan.ray.driver import RayScanner
    from worker.scan.run import ScanRun
    from worker.sinks.pacs import PacsOutputs
    from worker.sinks.results_file import ResultsFile
    from worker.sinks.ris import RisOutputs
    from worker.sources.walk import FoundFile

log = logging.getLogger(__name__)


# -- the model -----------------------------------------------------------------------


def open_model(settings: Settings) -> ports.Model:
    """The model, loaded only if its SHA-256 is the configured (or pinned) one: a bundle
    (``xray-train export``; no torch or fastai needed) or an exported learner."""
    from worker.model.load import load

    m = settings.model
    return load(
        m.path,
        sha256=m.expected_sha256(),
        trust=m.trust,
        positive_class=m.positive_class,
        runtime=settings.inference.runtime,
    )


def decode_limits(settings: Settings) -> Limits:
    from worker.decode import Limits

    return Limits(settings.decode.max_pixels, settings.decode.max_side, settings.decode.min_side)


def open_predictor(settings: Settings, model: ports.Model | None = None) -> Predictor:
    """The batched predictor on the configured device (the model loaded and checked if not
    given), with the gate of the [gate] settings and the model's own image gate."""
    from worker.model.predictor import Predictor

    model = model or open_model(settings)
    return Predictor(model, settings.inference, decode_limits(settings), gate=open_gate(settings, model))


def open_gate(settings: Settings, model: ports.Model) -> Gate | None:
    """What the model may judge (``worker/pipeline/gate.py``); None with ``[gate] enabled = false``."""
    from worker.model.gate import ImageGate
    from worker.pipeline.gate import Gate

    image = ImageGate.of(model)
    if settings.gate.enabled and settings.gate.image_check and image is None:
        log.info(
            "model %s has no image gate: only DICOM attributes are checked (xray-train gate)", model.name
        )
    return Gate.from_settings(settings.gate, image)


def predict_files(
    settings: Settings,
    paths: Iterable[Path],
    out: TextIO,
    err: TextIO,
    *,
    as_json: bool,
    heatmaps: Path | None = None,
    heatmaps_for: str = "positives",
) -> int:
    """``predict``: screen the files named (folders walked), one line each; the exit status
    (1 when a file failed, or when nothing was found, with what was skipped and why).
    ``heatmaps``: a folder to write the heatmaps of the films ``heatmaps_for`` names into
    (``worker/explain``), each path on its film's line."""
    from worker.sinks.console import Console, describe
    from worker.sources.walk import expand_paths

    predictor = open_predictor(settings)
    console = Console(predictor, out, err, as_json=as_json)
    console.header()
    skipped: Counter[str] = Counter()
    answers = predictor.predict(expand_paths(paths, skipped))
    if heatmaps is not None and heatmaps_for != "none":
        from worker.explain.heatmaps import Heatmapper
        from worker.explain.settings import ExplainSettings
        from worker.model.load import learner_of

        explain = ExplainSettings(heatmaps=heatmaps_for, folder=heatmaps)  # type: ignore[arg-type]
        mapper = Heatmapper(learner_of(predictor.model), explain, device=predictor.device)
        for answer, heatmap in mapper.annotate(answers, window=predictor.batch_size):
            console.write(answer, heatmap)
    else:
        for answer in answers:
            console.write(answer)
    if console.summary(skipped) == 0:
        why = f" (skipped: {describe(skipped)})" if skipped else ""
        err.write(f"Error: no files to screen under the given paths{why}\n")
        return exitcodes.SOME_FILES_FAILED
    return exitcodes.SOME_FILES_FAILED if console.counts["failed"] else exitcodes.OK


# -- the database --------------------------------------------------------------------


def open_store(settings: Settings, *, create: bool = True) -> Store:
    """The results database at the newest schema (``open_database``): a new SQLite file is
    created on first use; ``ConfigError`` unless at head, ``TransientError`` if unreachable."""
    from worker.db.store import Store

    engine = open_database(settings.database.url, create=create)
    return Store(engine, store_patient_ids=settings.database.store_patient_ids)


def open_database(url: str, *, create: bool = True) -> Engine:
    """An engine for the results database, which is at the newest schema.

    A SQLite file that does not exist yet is created at the newest schema, with one log
    line saying so (``create``: what ``scan``, ``watch`` and ``report`` do, so that the
    embedded default needs no set-up). A database that exists is only checked: one that
    is behind (or empty) is refused with ``ConfigError`` naming ``xray-worker db upgrade``,
    since upgrading a site's database is an operator's act; PostgreSQL is never created
    or migrated here. ``TransientError``, naming the database, when it cannot be reached.
    """
    from worker.db import migrate
    from worker.db.engine import make_engine, safe_url, sqlite_file
    from worker.db.errors import database_errors

    path = sqlite_file(url)
    engine = None
    try:
        with database_errors():
            if create and path is not None and not path.exists() and _create_sqlite(url, path):
                log.warning(
                    "created the results database %s at schema %s: there was none yet "
                    "(if one was expected, check [database] url)",
                    path,
                    migrate.head_revision(),
                )
            engine = make_engine(url)
            migrate.require_head(engine)
    except TransientError as exc:
        if engine is not None:
            engine.dispose()
        raise TransientError(f"{safe_url(url)}: {exc}") from None
    except BaseException:
        if engine is not None:
            engine.dispose()
        raise
    return engine


def _create_sqlite(url: str, path: Path) -> bool:
    """Create the SQLite file ``path`` at the newest schema, all at once: it is built under a
    temporary name beside it and linked into place, so that no process ever sees it empty
    or half-migrated. False when another process created it meanwhile (theirs is kept)."""
    import sqlite3
    import uuid
    from contextlib import closing, suppress

    from sqlalchemy import make_url

    from worker.db import migrate
    from worker.db.engine import make_engine

    draft = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.new")
    try:
        engine = make_engine(make_url(url).set(database=str(draft)), create=True)
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
        with closing(sqlite3.connect(draft)) as conn:  # all of it into the file itself, not its WAL
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        try:
            path.hardlink_to(draft)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: nearly as good
            if path.exists():
                return False
            draft.replace(path)
        return True
    except OSError as exc:
        raise ConfigError(f"cannot create the results database {path}: {exc.strerror or exc}") from None
    finally:
        for leftover in (draft, draft.with_name(draft.name + "-wal"), draft.with_name(draft.name + "-shm")):
            with suppress(OSError):  # not there: linked and gone, or never made
                leftover.unlink()


# -- watch ---------------------------------------------------------------------------


def absolute(path: Path) -> Path:
    """Absolute, so that the audit trail says exactly where files were and went."""
    return path.expanduser().absolute()


def open_heatmapper(settings: Settings, predictor: Predictor) -> Heatmapper | None:
    """The heatmap stage for ``[explain]`` (None: ``heatmaps = "none"``), on the predictor's
    device; its folder made absolute, like the inbox's."""
    if settings.explain.heatmaps == "none":
        return None
    from worker.explain.heatmaps import Heatmapper
    from worker.model.load import learner_of

    explain = dataclasses.replace(settings.explain, folder=absolute(settings.explain.folder))
    log.info("heatmaps: %s, under %s", explain.heatmaps, explain.folder)
    return Heatmapper(learner_of(predictor.model), explain, device=predictor.device)


@dataclasses.dataclass(frozen=True)
class Sinks:
    """Where a run's committed results go: ``after`` the commit (``ports.Sink``, called by the
    runner), and ``queued`` in the result's own transaction (the ``Committer``'s outputs: the
    outbox, delivered by ``send``)."""

    after: list[ports.Sink]
    queued: Outputs | None


def open_sinks(settings: Settings, store: ports.Store, *, output: ports.Sink | None = None) -> Sinks:
    """The sinks the settings ask for, for ``watch`` and ``scan`` alike (``output``: a scan's
    ``--output`` file). A new sink is a module under ``worker/sinks/`` and one line here."""
    from worker.pipeline.commit import join_outputs

    after = [sink for sink in (output,) if sink is not None]
    opened = (open_pacs_outputs(settings, store), open_ris_outputs(settings))
    queued = [outputs for outputs in opened if outputs is not None]
    return Sinks(after, join_outputs(queued))


def open_pacs_outputs(settings: Settings, store: ports.Store) -> PacsOutputs | None:
    """The PACS objects queued with each result (None: no ``[[pacs.destinations]]``); a new
    model's report names the report it replaces, as ``store`` knows it."""
    if not settings.pacs.destinations:
        return None
    from worker.sinks.pacs import PacsOutputs

    outputs = PacsOutputs(
        settings.pacs.destinations,
        max_side=settings.explain.max_side,
        reported=store.reported_by_other_models,
    )
    return outputs or None


def open_ris_outputs(settings: Settings) -> RisOutputs | None:
    """The RIS/EHR messages queued with each result (None: no hl7 or fhir destinations);
    ``ConfigError`` for a FHIR destination without the ``ehr`` extra."""
    if not (settings.hl7.destinations or settings.fhir.destinations):
        return None
    from worker.sinks.ris import RisOutputs

    return RisOutputs(settings.hl7.destinations, settings.fhir.destinations, settings.worklist)


def build_daemon(
    settings: Settings, *, faults: Faults | None = None, monitoring: Monitoring | None = None
) -> Daemon:
    """The inbox daemon: umask, folders, work area, inbox watcher, warmed-up predictor, store;
    with ``monitoring`` (``worker.metrics.monitoring.Monitoring``), its metrics and webhooks."""
    from worker.daemon import Daemon
    from worker.runtime.sdnotify import Notifier
    from worker.sinks.filer import Folders
    from worker.sources.claim import WorkArea, default_worker_id
    from worker.sources.inbox import Inbox

    box = dataclasses.replace(
        settings.inbox,
        path=absolute(settings.inbox.path),
        processed=absolute(settings.inbox.processed),
        failed=absolute(settings.inbox.failed),
    )
    os.umask(int(box.umask, 8))  # before anything is created: folders, sidecars, the database
    store = open_store(settings)
    predictor = open_predictor(settings)
    predictor.warm_up()
    try:
        for folder in (box.path, box.processed, box.failed):
            folder.mkdir(parents=True, exist_ok=True)
        work = WorkArea(box.path, box.worker_id or default_worker_id())
    except (OSError, ConfigError) as exc:
        raise ConfigError(f"cannot use the inbox {box.path}: {exc}") from None
    observer, metrics = (
        monitoring.pipeline(predictor.model, worker=work.worker_id) if monitoring else (None, None)
    )
    daemon = Daemon(
        inbox=Inbox(
            box.path,
            recursive=box.recursive,
            ignore=box.ignore,
            stability_seconds=box.stability_seconds,
            polling=box.polling,
            poll_interval=box.poll_interval,
            rescan_interval=box.rescan_interval,
        ),
        work=work,
        predictor=predictor,
        store=store,
        folders=Folders(box.processed, box.failed, box.layout, settings.gate.folder),
        batch_size=settings.inference.batch_size,
        max_wait=box.max_wait_ms / 1000,
        worker_host=socket.gethostname(),
        notifier=Notifier(),
        lease_seconds=box.lease_seconds,
        faults=faults,
        heatmapper=open_heatmapper(settings, predictor),
        sinks=(sinks := open_sinks(settings, store)).after,
        outputs=sinks.queued,
        observer=observer,
    )
    if metrics is not None:
        metrics.track_daemon(daemon.inbox.backlog, lambda: daemon.claimed)
    return daemon


def open_monitoring(stack: ExitStack, settings: Settings, *, notify: bool = True) -> Monitoring:
    """A long-running command's [metrics] endpoint and, with ``notify``, its [notify] webhooks
    (each none when not configured), closed with ``stack``; ``ConfigError`` for a port in use
    or a token not set."""
    from worker.metrics.monitoring import Monitoring

    return Monitoring.open(stack, settings, notify=notify)


def faults_from_environ() -> Faults:
    """Crash points for bench/chaos.py, from XRAY_SCREEN_FAULT (unset: none)."""
    from worker.runtime.faults import Faults

    return Faults.from_environ(os.environ)


# -- scan ----------------------------------------------------------------------------


def scan_roots(settings: Settings) -> list[Path]:
    """The archive folders to scan, each once; ``ConfigError`` if none or one is missing."""
    from worker.sources.walk import distinct_roots

    roots = distinct_roots(Path(r) for r in settings.scan.roots)
    if not roots:
        raise ConfigError("no folders to scan: name them (xray-worker scan /srv/archive) or set [scan] roots")
    for root in roots:
        if not root.exists():
            raise ConfigError(f"archive folder {root} does not exist (a typo, or a share not mounted?)")
    return roots


def scan_files(
    settings: Settings,
    roots: list[Path],
    since: datetime | None,
    on_error: Callable[[Path, OSError], None],
) -> Iterator[FoundFile]:
    """The streaming walk of ``roots`` with the [scan] include and exclude patterns."""
    from worker.sources.walk import FileFilter, walk_files

    s = settings.scan
    return walk_files(roots, FileFilter(s.include, s.exclude, since), on_error=on_error)


def check_output(output: Path, roots: list[Path]) -> None:
    """``--output`` must end in .csv or .jsonl and lie outside the archive (``UsageError``)."""
    from worker.sinks.results_file import output_format

    try:
        output_format(output)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    where = output.expanduser().absolute().resolve()
    for root in roots:
        if where.is_relative_to(root.resolve()):
            raise UsageError(
                f"--output {output} is inside the archive folder {root}, which a scan never "
                "writes to: put it somewhere else"
            )


def results_file(output: Path, classes: Iterable[str]) -> ResultsFile:
    """``--output``: the sink that writes each committed item to CSV or JSON Lines."""
    from worker.sinks.results_file import ResultsFile

    try:
        return ResultsFile(output, list(classes))
    except OSError as exc:
        raise ConfigError(f"cannot write --output {output}: {exc.strerror or exc}") from None


def run_scan(
    settings: Settings, *, since: datetime | None, limit: int | None, output: Path | None, err: TextIO
) -> tuple[list[str], int]:
    """``scan``: walk the [scan] roots into the database until done, stopped or at ``limit``;
    the summary's lines and the exit status (0 done, 130 stopped by a signal, 75 database or
    cluster unavailable). Progress goes to ``err``; the first SIGINT/SIGTERM commits the
    files in hand, a second exits at once."""
    from worker.runtime.signals import two_stage_shutdown
    from worker.scan.progress import Progress, summary_lines

    folders = scan_roots(settings)
    if output is not None:
        check_output(output, folders)
    summary = scan_summary(settings)
    store = open_store(settings)
    with ExitStack() as stack:
        stack.callback(store.close)
        vocab, make_scanner = open_scan_engine(stack, settings)
        out = results_file(output, vocab) if output else None
        if out:
            stack.callback(out.close)
        progress = Progress(err, interval=settings.scan.progress_interval, limit=limit)
        stack.callback(progress.finish)

        def unreadable(folder: Path, exc: OSError) -> None:
            log.warning("cannot read %s: %s", folder, exc.strerror or exc)
            scanner.counts.unreadable_folders += 1

        scanner = make_scanner(
            files=scan_files(settings, folders, since, unreadable),
            store=store,
            worker_host=socket.gethostname(),
            limit=limit,
            progress=progress,
            output=out,
            observer=summary,
        )
        if summary is not None:
            summary.describe_model(scanner.committer.screening.model)
        how, code = "done", exitcodes.OK
        shutdown = two_stage_shutdown(
            scanner.stop,
            on_first=lambda name: _say(
                err, f"\n{name}: committing the files in hand, then stopping (again to exit at once)"
            ),
            on_second=lambda name: _say(err, f"{name} again: exiting now; the next run redoes the batch"),
        )
        try:
            with shutdown:
                scanner.run()
        except ClusterError as exc:
            how, code = f"stopped: {exc}", exitcodes.TEMPFAIL
        except TransientError as exc:
            how, code = f"stopped, database unavailable ({exc})", exitcodes.TEMPFAIL
    if scanner.stopping:
        how, code = "interrupted (the next run goes on from here)", exitcodes.INTERRUPTED
    elif code == exitcodes.OK and scanner.at_limit:
        how = f"stopped at --limit {limit} (the next run goes on from here)"
    if summary is not None:
        summary.write(skipped=scanner.counts.skipped, seconds=progress.elapsed, exit_code=code)
    return summary_lines(scanner.counts, progress.elapsed, how), code


def scan_summary(settings: Settings) -> ScanSummary | None:
    """The scan's metrics, written to [metrics] textfile at the end (None: no file)."""
    if not settings.metrics.textfile:
        return None
    from worker.metrics.textfile import ScanSummary

    return ScanSummary(absolute(Path(settings.metrics.textfile)))


def _say(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


def open_scan_engine(stack: ExitStack, settings: Settings) -> tuple[Sequence[str], Callable[..., ScanRun]]:
    """Load the model for the chosen engine (before any cluster is joined, so a bad model
    fails fast); its classes, and a function that builds the scanner from the run's parts."""
    if settings.scan.engine == "ray":
        if settings.explain.heatmaps != "none" or settings.pacs.destinations:
            log.warning(
                "scan --engine ray writes no heatmaps and queues no PACS objects (the local engine does)"
            )
        model = open_model(settings)
        resources = _enter_ray(stack, settings)
        return model.vocab, lambda **common: _ray_scanner(settings, model, resources, common)
    from worker.scan.local import Scanner  # imports torch: not for --help

    predictor = open_predictor(settings)
    size = settings.inference.batch_size
    heatmapper = open_heatmapper(settings, predictor)

    def scanner(*, output: ports.Sink | None, **common: Any) -> Scanner:
        sinks = open_sinks(settings, common["store"], output=output)
        return Scanner(
            predictor=predictor,
            batch_size=size,
            heatmapper=heatmapper,
            sinks=sinks.after,
            outputs=sinks.queued,
            **common,
        )

    return predictor.model.vocab, scanner


def _enter_ray(stack: ExitStack, settings: Settings) -> dict[str, float]:
    """Join the cluster (or start a local one) until the scan ends."""
    from worker.scan.ray.cluster import ray_session

    return stack.enter_context(ray_session(settings.ray))


def _ray_scanner(
    settings: Settings, model: ports.Model, resources: dict[str, float], common: dict[str, Any]
) -> RayScanner:
    from worker.scan.ray.driver import RayScanner, RayScreening, size_pool
    from worker.scan.ray.stages import StageSpec

    pool = size_pool(resources, settings.ray, settings.inference.device)
    inference = settings.inference
    if not pool.gpus_per_actor:  # CPU actors: as many torch threads as CPUs reserved
        inference = replace(inference, device="cpu", threads=max(1, round(pool.cpus_per_actor)))
    spec = StageSpec(
        model_path=str(model.path.resolve()),
        model_sha256=model.sha256,
        positive_class=model.positive_class,
        inference=inference,
        limits=decode_limits(settings),
        database_url=settings.database.url,
        gate=settings.gate,
    )
    screening = RayScreening(model, spec, pool, settings.ray.block_files)
    # The actors keep the pixels, which a key image needs: the Ray engine queues no PACS objects.
    sinks = open_sinks(settings, common["store"], output=common.pop("output"))
    return RayScanner(screening=screening, sinks=sinks.after, **common)


# -- pull ------------------------------------------------------------------------------


def open_pullers(settings: Settings, names: Sequence[str] = ()) -> list[Puller]:
    """``pull``: one ``Puller`` per ``[[pull.sources]]`` table (those in ``names``; none: all),
    writing into [inbox] path with the receiver's writer and recording in the results database
    (at head; a SQLite file that does not exist yet is created). ``ConfigError`` when there is
    no source, ``UsageError`` for a name that is not one."""
    from worker.pull.run import Puller
    from worker.receive import open_writer, quiet_dicom_logs

    sources = settings.pull.sources
    if not sources:
        raise ConfigError(
            '[pull] has no sources: add a [[pull.sources]] table (README, "Pulling from a PACS")'
        )
    unknown = sorted(set(names) - {s.name for s in sources})
    if unknown:
        known = ", ".join(s.name for s in sources)
        raise UsageError(f"--source {', '.join(unknown)}: not in [pull] sources ({known})")
    engine = open_database(settings.database.url)
    writer = open_writer(settings)
    quiet_dicom_logs()
    sha256 = settings.model.expected_sha256()  # what tells an instance this model screened already
    chosen = [s for s in sources if not names or s.name in names]
    return [Puller(s, settings.pull, engine, writer, model_sha256=sha256) for s in chosen]


def run_pull(
    pullers: Sequence[Puller],
    *,
    since: date | None = None,
    days: int | None = None,
    accessions: Path | None = None,
    today: date | None = None,
) -> tuple[list[PullSummary], list[Exception]]:
    """One run per puller, in turn: the summaries, and the ``PacsError`` of each source that
    refused or failed (the others still run). The study dates: ``--since``, ``--days``, or each
    source's high-water mark (``worker/pull/period.py``); with accession numbers and neither
    flag, any date. ``UsageError`` for flags that do not go together or an unreadable file;
    ``TransientError`` when the database is down."""
    from worker.errors import PacsError
    from worker.pull.identifiers import read_accessions
    from worker.pull.period import choose_period

    wanted: list[str] = []
    if accessions is not None:
        try:
            wanted = read_accessions(accessions.read_text(encoding="utf-8"), str(accessions))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--accessions {accessions}: cannot read it: {exc}") from None
        if not wanted:
            raise UsageError(f"--accessions {accessions}: no accession number in it")
    today = today or date.today()
    summaries: list[PullSummary] = []
    errors: list[Exception] = []
    for puller in pullers:
        if wanted and since is None and days is None:
            period = None
        else:
            period, origin = choose_period(
                since=since, days=days, high_water=puller.high_water(), today=today
            )
            log.info("%s: study dates from %s", puller.source.name, origin)
        try:
            summaries.append(puller.run(period, wanted))
        except PacsError as exc:
            errors.append(exc)
    return summaries, errors
