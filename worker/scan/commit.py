"""What a scan knows about each file, and how a batch of verdicts is committed.

Shared by both scan engines (local threads in ``worker.scan``, Ray Data in
``worker.scan.ray.driver``): the same records, the same transaction (results, audit rows with no
destination, and the skip index's rows), the same retries, the same counts. So the
database cannot tell which engine screened a file, except by the device column.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from worker.db.store import AuditRecord, ResultRecord, ScannedRecord, Store, StoredResult
from worker.errors import TransientError
from worker.model.predictor import Failure, Outcome, Prediction
from worker.pipeline.hashing import sha256_file
from worker.pipeline.records import result_record
from worker.runtime.boundary import contain
from worker.runtime.retry import RetryPolicy, retrying
from worker.scan.progress import Progress, ScanCounts
from worker.sinks.results_file import FileVerdict
from worker.sources.walk import FoundFile

log = logging.getLogger("worker.scan")
T = TypeVar("T")
WORKER_ID = "scan"
# A scan gives up after 8 failed attempts in a row: about two minutes of database outage.
SCAN_RETRY = RetryPolicy(
    initial=1.0, maximum=60.0, attempts=8
)  # audit rows written by scans say so in worker_id


@dataclass(eq=False)
class ScanJob:
    """One archive file on its way through a scan, until its verdict is committed."""

    found: FoundFile
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    sha256: str | None = None
    size: int | None = None
    outcome: str = ""  # "" until decided: screened, duplicate or failed
    reason: str | None = None
    retry_next_run: bool = False  # an I/O error, not the file's content: not indexed
    label: str | None = None
    positive: bool = False
    positive_probability: float | None = None
    probabilities: dict[str, float] | None = None
    prediction: Prediction | None = None
    twins: list[ScanJob] = field(default_factory=list)  # same content, found while this was screened

    @property
    def path(self) -> str:
        return str(self.found.path)

    def hash(self) -> ScanJob:
        """Read the file's content hash; an unreadable file fails, to be tried again next run."""
        try:
            self.sha256, self.size = sha256_file(self.found.path)
        except OSError as exc:
            self.fail(f"cannot read file: {exc.strerror or exc}", retry_next_run=True)
        except Exception as exc:  # our fault, not the file's: tried again next run
            self.fail(contain("hashing", self.path, exc), retry_next_run=True)
        return self

    def fail(self, reason: str, *, retry_next_run: bool) -> None:
        self.outcome, self.reason, self.retry_next_run = "failed", reason, retry_next_run
        self.finished_at = datetime.now(UTC)

    def decide(self, outcome: Outcome, positive_class: str) -> None:
        """The model's verdict (or the decoder's refusal)."""
        if isinstance(outcome, Failure):
            self.fail(outcome.reason, retry_next_run=isinstance(outcome.error, TransientError))
            return
        self.finished_at = datetime.now(UTC)
        self.outcome, self.label, self.prediction = "screened", outcome.label, outcome
        self.positive = outcome.label == positive_class
        self.positive_probability = outcome.positive_probability
        self.probabilities = outcome.probabilities

    def copy_verdict(self, first: ScanJob) -> None:
        """Same content as ``first``: its verdict, without reading the image again."""
        if first.outcome == "failed":
            self.outcome, self.reason, self.retry_next_run = "failed", first.reason, first.retry_next_run
        else:
            self.outcome = "duplicate"
            self.label, self.positive = first.label, first.positive
            self.positive_probability, self.probabilities = first.positive_probability, first.probabilities
        self.finished_at = datetime.now(UTC)

    def copy_stored(self, stored: StoredResult) -> None:
        self.outcome, self.label, self.positive = "duplicate", stored.label, stored.positive
        self.positive_probability, self.probabilities = stored.positive_probability, stored.probabilities
        self.finished_at = datetime.now(UTC)


class ScanCommitter:
    """Commits batches of decided jobs, retrying while the database is unavailable, and counts
    what was committed. ``screening`` is what screened the files: it has ``model``,
    ``threshold`` and ``device_name``, like a ``Predictor``."""

    def __init__(
        self,
        *,
        store: Store,
        screening: Any,
        worker_host: str,
        progress: Progress | None = None,
        on_commit: Callable[[list[FileVerdict]], None] | None = None,
        retry: RetryPolicy | None = None,
        stop: threading.Event | None = None,
    ):
        self.store = store
        self.screening = screening
        self.worker_host = worker_host
        self.progress = progress
        self.on_commit = on_commit
        self.retry = retry or SCAN_RETRY
        self.stop = stop or threading.Event()  # set by ``ScanRun.stop()``: ends any wait
        self.counts = ScanCounts()

    @property
    def model_sha256(self) -> str:
        return str(self.screening.model.sha256)

    def commit(self, jobs: list[ScanJob]) -> None:
        """Results, audit rows and index rows of ``jobs`` in one transaction (``TransientError``
        if the database stays unavailable: nothing of this batch is then committed)."""
        start = time.perf_counter()
        try:
            results = [self._result(j) for j in jobs if j.outcome == "screened"]
            audits = [self._audit(j) for j in jobs]
            scanned = [self._scanned(j) for j in jobs if not j.retry_next_run]
            self.retrying(lambda: self.store.record_batch(results, audits, scanned))
        except TransientError:
            raise
        except Exception as exc:
            log.warning(
                "cannot record the batch (%s: %s); recording its files one by one", type(exc).__name__, exc
            )
            jobs = self._commit_one_by_one(jobs)
        for job in jobs:
            self._count(job)
        if self.on_commit:
            self._report([_verdict(j) for j in jobs])
        log.info(
            "batch: %d files (%d screened, %d duplicates, %d failed) committed in %.2f s",
            len(jobs),
            sum(j.outcome == "screened" for j in jobs),
            sum(j.outcome == "duplicate" for j in jobs),
            sum(j.outcome == "failed" for j in jobs),
            time.perf_counter() - start,
        )
        if self.progress:
            self.progress.update(self.counts)

    def _commit_one_by_one(self, jobs: list[ScanJob]) -> list[ScanJob]:
        """Each job in a transaction of its own; one whose rows the database will not take is
        recorded as failed (an internal error, tried again next run), with no result. One that
        cannot be recorded even so is left out, and read again next run. The jobs recorded."""
        recorded = []
        for job in jobs:
            try:
                self.retrying(lambda job=job: self._record_alone(job))
                recorded.append(job)
                continue
            except TransientError:
                raise
            except Exception as exc:
                job.fail(contain("recording", job.path, exc), retry_next_run=True)
                job.prediction = job.label = job.probabilities = job.positive_probability = None
                job.positive = False
            try:
                self.retrying(lambda job=job: self._record_alone(job))
            except TransientError:
                raise
            except Exception as exc:
                log.error("%s: cannot record it even as failed (%s: %s)", job.path, type(exc).__name__, exc)
                continue
            recorded.append(job)
        return recorded

    def _record_alone(self, job: ScanJob) -> None:
        results = [self._result(job)] if job.outcome == "screened" else []
        scanned = [] if job.retry_next_run else [self._scanned(job)]
        self.store.record_batch(results, [self._audit(job)], scanned)

    def _report(self, verdicts: list[FileVerdict]) -> None:
        """Hand the committed verdicts to ``on_commit`` (``--output``), one at a time when a
        batch of them fails: a verdict that cannot be written is logged, the rest are written."""
        assert self.on_commit is not None
        try:
            self.on_commit(verdicts)
            return
        except Exception:
            if len(verdicts) == 1:
                raise
        for verdict in verdicts:
            try:
                self.on_commit([verdict])
            except Exception as exc:
                contain("writing the --output line of", verdict.path, exc)

    def _scanned(self, job: ScanJob) -> ScannedRecord:
        return ScannedRecord(
            path=job.path,
            model_sha256=self.model_sha256,
            size=job.found.size,  # as the walk saw it: a later change is noticed next run
            mtime_ns=job.found.mtime_ns,
            content_sha256=job.sha256,
            outcome=job.outcome,  # type: ignore[arg-type]
        )

    def retrying(self, call: Callable[[], T]) -> T:
        """``call()``, again after the policy's pause while the database is unavailable; then give
        up (``TransientError``). ``stop()`` ends a pause at once."""

        def describe(exc: BaseException, delay: float, attempt: int) -> str:
            return f"{exc}; retrying in {delay:.1f} s (attempt {attempt} of {self.retry.attempts})"

        return retrying(call, self.retry, self.stop, describe=describe)

    def _count(self, job: ScanJob) -> None:
        c = self.counts
        if job.outcome == "failed":
            c.failed[job.reason or "unknown"] += 1
            log.debug("%s: failed (%s)", job.path, job.reason)
            return
        if job.outcome == "screened":
            c.screened += 1
        else:
            c.duplicates += 1
        c.positives += job.positive
        log.debug("%s: %s %s", job.path, job.outcome, job.label)

    def _result(self, job: ScanJob) -> ResultRecord:
        assert job.prediction is not None and job.sha256 is not None and job.finished_at is not None
        return result_record(
            self.screening,
            job.prediction,
            job.sha256,
            queued_at=None,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )

    def _audit(self, job: ScanJob) -> AuditRecord:
        return AuditRecord(
            source_path=job.path,
            file_size=job.size if job.size is not None else job.found.size,
            content_sha256=job.sha256,
            outcome=job.outcome,  # type: ignore[arg-type]
            worker_host=self.worker_host,
            worker_id=WORKER_ID,
            reason=job.reason,
            destination_path=None,  # nothing moves
            model_sha256=self.model_sha256,
            at=job.finished_at or datetime.now(UTC),
            event_id=job.event_id,  # fixed per file: a retried commit cannot log it twice
        )


class ScanRun:
    """What both engines' scanners share: the committer and its counts, ``stop()``, the limit.

    ``screening`` is the ``Predictor`` (local engine) or ``RayScreening`` (Ray engine).
    """

    def __init__(self, *, limit: int | None = None, **commit: Any):
        """``commit``: the ``ScanCommitter``'s arguments (store, screening, worker_host, progress,
        on_commit, retry), passed on as they are."""
        self._stop = threading.Event()
        self.committer = ScanCommitter(stop=self._stop, **commit)
        self.store, self.progress = self.committer.store, self.committer.progress
        self.limit = limit
        self._planned = 0  # files read this run (the limit counts these)

    @property
    def counts(self) -> ScanCounts:
        """What was committed so far, and what was skipped."""
        return self.committer.counts

    def stop(self) -> None:
        """Take no new files; what is in hand is finished and committed, then ``run()`` returns."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def at_limit(self) -> bool:
        """The run read ``limit`` files; more may be left for the next one."""
        return self.limit is not None and self._planned >= self.limit


def _verdict(job: ScanJob) -> FileVerdict:
    return FileVerdict(
        path=job.path,
        outcome=job.outcome,
        label=job.label,
        positive_probability=job.positive_probability,
        probabilities=job.probabilities,
        reason=job.reason,
        content_sha256=job.sha256,
    )
