"""The archive scan: screen every file below some folders, read-only, resumably.

The second front end of the daemon's pipeline: the same ``Predictor`` (decode pool,
batching, device), the same result records, the same transaction. What differs is where
files come from and what happens to them afterwards: nothing. Files are found by a
streaming walk, and never moved, renamed or written.

For each chunk of files the walk yields:

1. skip: one query to the skip index (``scanned_files``): a file whose path, size and
   mtime are recorded for this model is not even opened;
2. hash the rest in a thread pool; content this model already screened (another path, an
   earlier run, the inbox daemon) is a duplicate, and content met earlier in this run
   waits for that file's verdict: neither goes through the model;
3. screen what is left, streamed through one long ``Predictor.predict`` call, so decoding
   overlaps the model across batches;
4. commit each batch of verdicts: results, audit rows (``destination_path`` NULL) and the
   files' index rows in one transaction, retried with backoff on transient errors.

So a scan stopped at any point (Ctrl-C, a crash, a reboot) resumes at its last commit.
Unreadable files (an I/O error, permission denied) are recorded but not indexed: the next
run tries them again. Undecodable files are indexed like the others, and skipped until
their size or mtime changes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from worker.db.store import AuditRecord, ResultRecord, ScannedRecord, Store, StoredResult, chunks
from worker.discover import FoundFile
from worker.errors import TransientError
from worker.hashing import sha256_file
from worker.inference import Failure, Outcome, Prediction, Predictor
from worker.progress import Progress, ScanCounts
from worker.records import result_record
from worker.results_file import FileVerdict
from worker.retry import Backoff

log = logging.getLogger(__name__)
T = TypeVar("T")
WORKER_ID = "scan"  # audit rows written by scans say so in worker_id


@dataclass(eq=False)
class _Job:
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
    twins: list[_Job] = field(default_factory=list)  # same content, found while this was screened

    @property
    def path(self) -> str:
        return str(self.found.path)

    def copy_verdict(self, first: _Job) -> None:
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


class Scanner:
    """Screens ``files`` into ``store``; ``run()`` until they are done, ``stop()`` from a signal."""

    def __init__(
        self,
        *,
        files: Iterable[FoundFile],
        predictor: Predictor,
        store: Store,
        worker_host: str,
        batch_size: int | None = None,
        limit: int | None = None,
        progress: Progress | None = None,
        on_commit: Callable[[list[FileVerdict]], None] | None = None,
        attempts: int = 8,  # with the default backoff: about two minutes of outage
        backoff: Backoff | None = None,
    ):
        self.files = iter(files)
        self.predictor = predictor
        self.store = store
        self.worker_host = worker_host
        self.batch_size = batch_size or predictor.batch_size
        self.limit = limit
        self.progress = progress
        self.on_commit = on_commit
        self.attempts = attempts
        self.backoff = backoff or Backoff(initial=1.0, maximum=60.0)
        self.counts = ScanCounts()
        self._stop = threading.Event()
        self._planned = 0  # files read this run (the limit counts these)
        self._screening: deque[_Job] = deque()  # handed to the predictor, in its order
        self._first: dict[str, _Job] = {}  # content -> the file screening it, until committed
        self._ready: list[_Job] = []  # decided, waiting for the next commit
        self._committer: ThreadPoolExecutor | None = None
        self._committing: Future[None] | None = None  # the commit in flight, if any

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

    def run(self) -> ScanCounts:
        """Scan until the files run out, the limit is reached or ``stop()``; ``TransientError`` if
        the database stays unavailable (everything committed before stays)."""
        model = self.predictor.model
        log.info("scanning with %s (%s) on %s", model.name, model.sha256[:12], self.predictor.device_name)
        with (
            ThreadPoolExecutor(self.predictor.workers, thread_name_prefix="hash") as hashers,
            ThreadPoolExecutor(1, thread_name_prefix="commit") as committer,
        ):
            self._committer = committer
            try:
                for outcome in self.predictor.predict(self._feed(hashers)):
                    job = self._screening.popleft()
                    assert outcome.path == job.found.path, (outcome.path, job.found.path)
                    self._decide(job, outcome)
                    if len(self._ready) >= self.batch_size:
                        self._commit_soon()
                self._commit_soon()
            finally:
                self._wait_for_commit()
        return self.counts

    def _commit_soon(self) -> None:
        """Hand the decided files to the commit thread, so the model need not wait for the
        database; commits stay one at a time and in order (the previous one is awaited, and
        its error, if any, raised here)."""
        jobs, self._ready = self._ready, []
        self._wait_for_commit()
        if jobs:
            self._committing = self._committer.submit(self._commit, jobs)

    def _wait_for_commit(self) -> None:
        committing, self._committing = self._committing, None
        if committing is not None:
            committing.result()

    # -- finding the work ------------------------------------------------------------

    def _feed(self, hashers: ThreadPoolExecutor) -> Iterator[Path]:
        """The paths that need the model; the predictor pulls them as it has room.

        Without a limit, the next chunk is looked up and hashed in the background while
        this one is settled and screened, so the model never waits for the disk or the
        index (with ``--limit``, chunks go one at a time, so no file beyond it is read).
        """
        with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as reader:
            ahead: Future[_Read] | None = None
            found = chunks(self._found(), self.batch_size)
            while True:
                if ahead is not None:
                    read, ahead = ahead.result(), None
                    if self._stop.is_set():
                        return  # read ahead, but not taken: the next run reads it again
                else:
                    read = self._read(next(found, None), hashers)
                if read is None:
                    return
                if self.limit is None and not self._stop.is_set():
                    ahead = reader.submit(self._read, next(found, None), hashers)
                for job in self._settle(read):
                    self._screening.append(job)
                    yield job.found.path
                if len(self._ready) >= self.batch_size:  # duplicates need no model to be committed
                    self._commit_soon()
                if self.progress:
                    self.progress.update(self.counts)

    def _found(self) -> Iterator[FoundFile]:
        for found in self.files:
            if self._stop.is_set() or self.at_limit:
                return
            yield found

    def _read(self, chunk: Sequence[FoundFile] | None, hashers: ThreadPoolExecutor) -> _Read | None:
        """Skip what the index says is unchanged, hash the rest. Touches no shared state."""
        if not chunk:
            return None
        model_sha = self.predictor.model.sha256
        stamps = self._retrying(lambda: self.store.scan_index([str(f.path) for f in chunk], model_sha))
        fresh = []
        for found in chunk:
            stamp = stamps.get(str(found.path))
            if stamp is None or (stamp.size, stamp.mtime_ns) != (found.size, found.mtime_ns):
                fresh.append(found)
        skipped = len(chunk) - len(fresh)
        if self.limit is not None:  # no read-ahead with a limit: _planned is current here
            fresh = fresh[: max(0, self.limit - self._planned)]
        jobs = list(hashers.map(_hash, [_Job(found) for found in fresh]))
        return _Read(jobs, skipped)

    def _settle(self, read: _Read) -> list[_Job]:
        """Settle failures and duplicates; return what needs the model."""
        self.counts.skipped += read.skipped
        self._planned += len(read.jobs)
        model_sha = self.predictor.model.sha256
        for job in read.jobs:
            if job.outcome == "failed":
                self._ready.append(job)
        hashed = [j for j in read.jobs if j.sha256 is not None]
        new = {j.sha256 for j in hashed if j.sha256 not in self._first}
        known = self._retrying(lambda: self.store.known_results(new, model_sha)) if new else {}
        to_screen: list[_Job] = []
        for job in hashed:
            assert job.sha256 is not None
            first = self._first.get(job.sha256)
            if first is not None and first.outcome:
                job.copy_verdict(first)
                self._ready.append(job)
            elif first is not None:
                first.twins.append(job)  # decided when ``first`` is
            elif job.sha256 in known:
                job.copy_stored(known[job.sha256])
                self._ready.append(job)
            else:
                self._first[job.sha256] = job
                to_screen.append(job)
        return to_screen

    # -- deciding and committing -------------------------------------------------------

    def _decide(self, job: _Job, outcome: Outcome) -> None:
        job.finished_at = datetime.now(UTC)
        if isinstance(outcome, Failure):
            job.outcome, job.reason = "failed", outcome.reason
            job.retry_next_run = isinstance(outcome.error, TransientError)
        else:
            job.outcome, job.label, job.prediction = "screened", outcome.label, outcome
            job.positive = outcome.label == self.predictor.model.positive_class
            job.positive_probability = outcome.positive_probability
            job.probabilities = outcome.probabilities
        self._ready.append(job)
        for twin in job.twins:
            twin.copy_verdict(job)
            self._ready.append(twin)
        job.twins = []

    def _commit(self, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        model_sha = self.predictor.model.sha256
        results = [self._result(j) for j in jobs if j.outcome == "screened"]
        audits = [self._audit(j) for j in jobs]
        scanned = [
            ScannedRecord(
                path=j.path,
                model_sha256=model_sha,
                size=j.found.size,  # as the walk saw it: a later change is noticed next run
                mtime_ns=j.found.mtime_ns,
                content_sha256=j.sha256,
                outcome=j.outcome,  # type: ignore[arg-type]
            )
            for j in jobs
            if not j.retry_next_run
        ]
        self._retrying(lambda: self.store.record_batch(results, audits, scanned))
        for job in jobs:
            if job.sha256 and self._first.get(job.sha256) is job:
                del self._first[job.sha256]  # known_results finds it from now on
            self._count(job)
        if self.on_commit:
            self.on_commit([_verdict(j) for j in jobs])
        log.info(
            "batch: %d files (%d screened, %d duplicates, %d failed) committed in %.2f s",
            len(jobs),
            len(results),
            sum(j.outcome == "duplicate" for j in jobs),
            sum(j.outcome == "failed" for j in jobs),
            time.perf_counter() - start,
        )
        if self.progress:
            self.progress.update(self.counts)

    def _count(self, job: _Job) -> None:
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

    def _retrying(self, call: Callable[[], T]) -> T:
        """``call()``, again after a pause while the database is unavailable; then give up."""
        for attempt in range(1, self.attempts + 1):
            try:
                result = call()
            except TransientError as exc:
                if attempt == self.attempts:
                    raise
                delay = self.backoff.next_delay()
                log.warning("%s; retrying in %.1f s (attempt %d of %d)", exc, delay, attempt, self.attempts)
                time.sleep(delay)
                continue
            self.backoff.reset()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _result(self, job: _Job) -> ResultRecord:
        assert job.prediction is not None and job.sha256 is not None and job.finished_at is not None
        return result_record(
            self.predictor,
            job.prediction,
            job.sha256,
            queued_at=None,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )

    def _audit(self, job: _Job) -> AuditRecord:
        return AuditRecord(
            source_path=job.path,
            file_size=job.size if job.size is not None else job.found.size,
            content_sha256=job.sha256,
            outcome=job.outcome,  # type: ignore[arg-type]
            worker_host=self.worker_host,
            worker_id=WORKER_ID,
            reason=job.reason,
            destination_path=None,  # nothing moves
            model_sha256=self.predictor.model.sha256,
            at=job.finished_at or datetime.now(UTC),
            event_id=job.event_id,  # fixed per file: a retried commit cannot log it twice
        )


@dataclass
class _Read:
    """A chunk of found files, looked up in the skip index and hashed."""

    jobs: list[_Job]
    skipped: int


def _hash(job: _Job) -> _Job:
    try:
        job.sha256, job.size = sha256_file(job.found.path)
    except OSError as exc:
        job.outcome, job.reason = "failed", f"cannot read file: {exc.strerror or exc}"
        job.retry_next_run, job.finished_at = True, datetime.now(UTC)
    return job


def _verdict(job: _Job) -> FileVerdict:
    return FileVerdict(
        path=job.path,
        outcome=job.outcome,
        label=job.label,
        positive_probability=job.positive_probability,
        probabilities=job.probabilities,
        reason=job.reason,
        content_sha256=job.sha256,
    )
