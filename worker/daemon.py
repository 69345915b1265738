"""The inbox daemon: claim complete files, screen them in batches, commit, then file them.

The order of a batch is what makes it safe:

1. claim: each file is renamed into this worker's work area (one owner per file);
2. screen: hash, skip content this model already screened, decode and infer the rest;
3. commit: results and audit rows in one transaction, each audit row carrying the claim's
   id and the file's planned destination;
4. file: move each file to that destination, then forget the claim.

A crash before 3 leaves the file in the work area with nothing committed: it is screened
again. A crash after 3 leaves it there with its audit row: the restart only finishes the
move. A crash during 4 leaves it, at worst, under both names (a move is a hard link, then
removing the old name): the restart sees the link and only removes the old name. So no
file is lost, and none is recorded or filed twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from worker.db.store import AuditRecord, ResultRecord, Store, StoredResult
from worker.errors import TransientError
from worker.model.predictor import Failure, Prediction, Predictor
from worker.names import for_log
from worker.pipeline.hashing import sha256_file
from worker.pipeline.records import result_record
from worker.runtime.boundary import contain
from worker.runtime.faults import Faults
from worker.runtime.lease import Heartbeat, beat_interval
from worker.runtime.retry import Backoff, wait
from worker.runtime.sdnotify import Notifier
from worker.sinks.filing import move_no_clobber, safe_component, write_error_sidecar
from worker.sources.claim import Claimed, WorkArea
from worker.sources.inbox import Inbox

log = logging.getLogger(__name__)
WINDOW_BATCHES = 4


@dataclass(frozen=True)
class Folders:
    processed: Path
    failed: Path
    layout: str = "{label}/{date}"

    def processed_folder(self, label: str, when: datetime) -> Path:
        parts = self.layout.format(
            label=safe_component(label),
            date=when.strftime("%Y-%m-%d"),
            year=when.strftime("%Y"),
            month=when.strftime("%m"),
            day=when.strftime("%d"),
        )
        return self.processed.joinpath(*(safe_component(p) for p in parts.split("/") if p))

    def failed_folder(self, when: datetime) -> Path:
        return self.failed / when.strftime("%Y-%m-%d")


@dataclass
class _Job:
    claimed: Claimed
    event_id: uuid.UUID
    sha256: str | None = None
    size: int | None = None
    outcome: str = ""
    label: str | None = None
    reason: str | None = None
    folder: Path | None = None
    prediction: Prediction | None = None


def event_id_for(claimed: Claimed) -> uuid.UUID:
    """The audit row's id is derived from the claim, so a restart can find it."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"xray-screen-claim:{claimed.token}")


class Daemon:
    """Watches an inbox; ``run()`` until ``stop()``; ``step()`` does one unit of work."""

    def __init__(
        self,
        *,
        inbox: Inbox,
        work: WorkArea,
        predictor: Predictor,
        store: Store,
        folders: Folders,
        batch_size: int,
        max_wait: float = 0.2,
        worker_host: str,
        notifier: Notifier | None = None,
        status_interval: float = 30.0,
        lease_seconds: float = 600.0,
        faults: Faults | None = None,
    ):
        self.inbox, self.work, self.predictor, self.store = inbox, work, predictor, store
        self.folders = folders
        self.batch_size = batch_size
        # With a backlog, up to this many files go through one step: the model still sees
        # batch_size at a time, but decoding overlaps it across batches and the per-step
        # costs (queries, the commit, fsyncs) are paid once for several batches.
        self.window = batch_size * WINDOW_BATCHES
        self.max_wait = max_wait
        self.worker_host = worker_host
        self.notifier = notifier or Notifier({})
        self.status_interval = status_interval
        self.lease_seconds = lease_seconds
        # Beats and looks for dead workers a few times per lease (worker/runtime/lease.py).
        self.beat_interval = beat_interval(lease_seconds)
        self._heartbeat = Heartbeat(work.heartbeat, self.beat_interval)
        self.faults = faults or Faults()  # crash points for bench/chaos.py; inert by default
        self.backoff = Backoff()
        self.counts: dict[str, int] = {"screened": 0, "duplicate": 0, "failed": 0}
        self._queue: deque[Claimed] = deque()
        self._internal: dict[str, str] = {}  # claim token -> why its file fails (an internal error)
        self._stop = threading.Event()
        self._hashers = ThreadPoolExecutor(predictor.workers, thread_name_prefix="hash")
        self._last_beat = 0.0
        self._next_adoption = 0.0

    # -- lifecycle -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return."""
        self._stop.set()
        self.inbox.wakeup.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def recover(self) -> None:
        """Files this worker (or a dead one) claimed earlier go to the front of the queue."""
        adopted = self.work.adopt_abandoned(self.lease_seconds)
        self._next_adoption = time.monotonic() + self.beat_interval
        pending = self.work.pending()
        self._queue.extend(pending)
        if pending:
            log.info("recovered %d claimed files (%d adopted from dead workers)", len(pending), len(adopted))

    def adopt(self) -> None:
        """While running, take over the claims of workers that died, when the next look is due."""
        now = time.monotonic()
        if now < self._next_adoption:
            return
        self._next_adoption = now + self.beat_interval
        adopted = self.work.adopt_abandoned(self.lease_seconds)
        self._queue.extendleft(reversed(adopted))  # they waited longest: first

    def run(self) -> None:
        self.recover()
        self._heartbeat.start()
        self.inbox.start()
        self.notifier.ready(self.status())
        log.info(
            "ready: screening %s with %s on %s",
            self.inbox.root,
            self.predictor.model.name,
            self.predictor.device_name,
        )
        try:
            while not self._stop.is_set():
                try:
                    done = self.step()
                except TransientError as exc:
                    delay = self.backoff.next_delay(exc) or self.backoff.policy.maximum
                    log.warning("%s; retrying in %.1f s (files stay claimed)", exc, delay)
                    self.notifier.status(f"waiting: {exc}")
                    wait(self._stop, delay)
                    continue
                self.backoff.reset()
                if not done:
                    self.inbox.wakeup.wait(self._idle_timeout())
        finally:
            self.notifier.stopping()
            self._heartbeat.stop()
            self.inbox.stop()
            self._hashers.shutdown()
            self.work.close()
            log.info("stopped: %s", self.status())

    def _idle_timeout(self) -> float:
        waits = [self.inbox.next_check_in(), self.status_interval, self._next_adoption - time.monotonic()]
        if self._queue:
            waits.append(max(0.0, self._queue[0].claimed_at + self.max_wait - time.time()))
        if self.notifier.watchdog_interval:
            waits.append(self.notifier.watchdog_interval)
        return max(0.01, min(waits))

    def status(self) -> str:
        c = self.counts
        return (
            f"{c['screened']} screened, {c['duplicate']} duplicates, {c['failed']} failed; "
            f"{len(self._queue)} claimed, {self.inbox.backlog()} waiting"
        )

    # -- one unit of work ------------------------------------------------------------

    def step(self) -> int:
        """Claim what is ready; screen one batch when full or old enough. Returns files filed."""
        self._beat()
        self.adopt()
        room = self.window - len(self._queue)
        if room > 0:
            for path in self.inbox.take(room):
                claimed = self._claim(path)
                if claimed is not None:
                    self._queue.append(claimed)
        if not self._queue:
            return 0
        full = len(self._queue) >= self.batch_size
        old = time.time() - self._queue[0].claimed_at >= self.max_wait
        if not (full or old or self._stop.is_set()):
            return 0
        batch = [self._queue[i] for i in range(min(self.window, len(self._queue)))]
        self.process(batch)  # raises TransientError with the batch still queued
        for _ in batch:
            self._queue.popleft()
        return len(batch)

    def _claim(self, path: Path) -> Claimed | None:
        """Claim ``path``. Something unexpected while claiming it fails that file: it is claimed
        under a bare name and goes to failed/ with the reason; if even that fails, it stays in
        the inbox until the next start (logged)."""
        try:
            return self.work.claim(path)
        except TransientError:
            raise
        except Exception as exc:
            reason = contain("claiming", for_log(str(path)), exc)
        try:
            claimed = self.work.claim(path, bare=True)
        except TransientError:
            raise
        except Exception as exc:
            log.error(
                "cannot claim %s at all (%s: %s): leaving it in the inbox until the next start",
                path,
                type(exc).__name__,
                exc,
            )
            self.inbox.leave(path)
            return None
        if claimed is not None:
            self._internal[claimed.token] = reason
        return claimed

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat >= min(self.status_interval, self.notifier.watchdog_interval or 1e9):
            self._last_beat = now
            self.notifier.watchdog()  # first: the daemon is alive even when its share is not
            self.notifier.status(self.status())
            self.work.heartbeat()

    def process(self, batch: list[Claimed]) -> None:
        start = time.perf_counter()
        jobs = [_Job(c, event_id_for(c)) for c in batch]
        plans = self.store.plans_of([j.event_id for j in jobs])
        todo = [j for j in jobs if j.event_id not in plans]
        for job in jobs:
            plan = plans.get(job.event_id)
            if plan is not None:  # committed before a crash: only the move is left
                job.outcome, job.reason, job.sha256 = plan.outcome, plan.reason, plan.content_sha256
                self._file(job, Path(plan.destination_path))
        if not todo:
            return
        for job in todo:
            if job.claimed.token in self._internal:  # its claim went wrong (see _claim)
                job.outcome, job.reason = "failed", self._internal[job.claimed.token]
        started = datetime.now(UTC)
        list(self._hashers.map(self._hash, todo))  # reading and hashing overlap across files
        model = self.predictor.model
        known = self.store.known_results([j.sha256 for j in todo if j.sha256], model.sha256)
        fresh = self._screen(todo, known)
        finished_at = datetime.now(UTC)
        self.work.check()  # files unreadable because the share dropped are not failures to record
        results = {j.claimed.token: r for j in fresh if (r := self._result(j, started, finished_at))}
        todo = self._still_mine(todo)
        audits = [self._plan(j, finished_at) for j in todo]
        recorded = self._record(todo, results, audits)
        self.faults.reach("after-commit")
        for job, audit in recorded:
            self._file(job, Path(audit.destination_path or ""))
            self.counts[job.outcome] += 1
            self._internal.pop(job.claimed.token, None)
        seconds = time.perf_counter() - start
        log.info(
            "batch: %d files (%d screened, %d duplicates, %d failed) in %.2f s, %.1f images/s",
            len(jobs),
            sum(j.outcome == "screened" for j in todo),
            sum(j.outcome == "duplicate" for j in todo),
            sum(j.outcome == "failed" for j in todo),
            seconds,
            len(jobs) / seconds if seconds else 0,
        )

    def _record(
        self, jobs: list[_Job], results: dict[str, ResultRecord], audits: list[AuditRecord]
    ) -> list[tuple[_Job, AuditRecord]]:
        """Commit the batch in one transaction; the jobs recorded, with their audit rows.

        Should the batch fail for a reason no retry fixes (a row of one file that the
        database will not take), each file is committed alone, and a file whose rows still
        fail is recorded as failed, with the reason, and no result. One whose failure row
        cannot be written either stays claimed until the next start (logged).
        """
        kept = [results[j.claimed.token] for j in jobs if j.claimed.token in results]
        try:
            self.store.record_batch(kept, audits, before_commit=lambda: self.faults.reach("in-commit"))
            return list(zip(jobs, audits, strict=True))
        except TransientError:
            raise
        except Exception as exc:
            log.warning(
                "cannot record the batch (%s: %s); recording its files one by one", type(exc).__name__, exc
            )
        recorded = []
        for job, audit in zip(jobs, audits, strict=True):
            result = results.get(job.claimed.token)
            try:
                self.store.record_batch([result] if result else [], [audit])
                recorded.append((job, audit))
                continue
            except TransientError:
                raise
            except Exception as exc:
                job.outcome, job.reason = "failed", contain("recording", job.claimed.source, exc)
            audit = self._plan(job, audit.at)
            try:
                self.store.record_batch([], [audit])
            except TransientError:
                raise
            except Exception as exc:
                log.error(
                    "%s: cannot record it even as failed (%s: %s); it stays claimed until the next start",
                    job.claimed.source,
                    type(exc).__name__,
                    exc,
                )
                continue
            recorded.append((job, audit))
        return recorded

    def _still_mine(self, jobs: list[_Job]) -> list[_Job]:
        """The jobs whose file is still in the work area. One that is gone was adopted by a
        worker that took this one for dead (silent for longer than the lease): it is that
        worker's now, and recording it here (as unreadable) would send it to failed/."""
        mine = []
        for job in jobs:
            if os.path.lexists(job.claimed.path):
                mine.append(job)
            else:
                log.warning("%s: taken over by another worker; leaving it to that one", job.claimed.source)
        return mine

    def _hash(self, job: _Job) -> None:
        try:
            job.sha256, job.size = sha256_file(job.claimed.path)
        except OSError as exc:
            job.outcome, job.reason = "failed", f"cannot read file: {exc.strerror or exc}"
        except Exception as exc:
            job.outcome, job.reason = "failed", contain("hashing", job.claimed.source, exc)

    def _screen(self, jobs: list[_Job], known: dict[str, StoredResult]) -> list[_Job]:
        """Infer content not seen before; the rest are duplicates of an earlier result."""
        first: dict[str, _Job] = {}
        to_infer: list[_Job] = []
        for job in jobs:
            if job.outcome == "failed" or job.sha256 is None:
                continue
            if job.sha256 in known:
                job.outcome, job.label = "duplicate", known[job.sha256].label
            elif job.sha256 in first:
                job.outcome = "duplicate"  # same content twice in this batch
            else:
                first[job.sha256] = job
                to_infer.append(job)
        outcomes = self.predictor.predict([j.claimed.path for j in to_infer])
        for job, outcome in zip(to_infer, outcomes, strict=True):
            if isinstance(outcome, Failure):
                job.outcome, job.reason = "failed", outcome.reason
            else:
                job.outcome, job.label, job.prediction = "screened", outcome.label, outcome
        for job in jobs:
            if job.outcome == "duplicate" and job.label is None:
                twin = first[job.sha256 or ""]
                job.label = twin.label
                job.outcome, job.reason = (
                    ("failed", twin.reason) if twin.outcome == "failed" else ("duplicate", None)
                )
        return [j for j in to_infer if j.outcome == "screened"]

    def _result(self, job: _Job, started: datetime, finished: datetime) -> ResultRecord | None:
        """The result row of a screened file; None (and the file failed) if it cannot be built."""
        assert job.prediction is not None and job.sha256 is not None
        queued = datetime.fromtimestamp(job.claimed.claimed_at, UTC)
        try:
            return result_record(
                self.predictor,
                job.prediction,
                job.sha256,
                queued_at=queued,
                started_at=started,
                finished_at=finished,
            )
        except Exception as exc:
            job.outcome, job.reason = "failed", contain("recording the result of", job.claimed.source, exc)
            return None

    def _plan(self, job: _Job, when: datetime) -> AuditRecord:
        """Where the file will go: decided, and recorded, before it moves."""
        if job.outcome == "failed":
            folder = self.folders.failed_folder(when)
        else:
            folder = self.folders.processed_folder(job.label or "UNKNOWN", when)
        return AuditRecord(
            source_path=str(self.work.inbox / job.claimed.source),
            file_size=job.size,
            content_sha256=job.sha256,
            outcome=job.outcome,  # type: ignore[arg-type]
            worker_host=self.worker_host,
            worker_id=self.work.worker_id,
            reason=job.reason,
            destination_path=str(folder / job.claimed.name),
            model_sha256=self.predictor.model.sha256,
            at=when,
            event_id=job.event_id,
        )

    def _file(self, job: _Job, destination: Path) -> None:
        """Move the claimed file to its recorded destination (a free name beside it if taken)."""

        def placed(moved: Path) -> None:
            # The file is at ``moved`` and still in the work area: a crash from here on is
            # finished by the restart, so the row and the sidecar are written now, not after.
            if moved != destination:
                self.store.set_destination(job.event_id, str(moved))
            if job.outcome == "failed":
                write_error_sidecar(
                    moved,
                    {
                        "reason": job.reason,
                        "source": job.claimed.source,
                        "sha256": job.sha256,
                        "at": datetime.now(UTC).isoformat(),
                    },
                )
            self.faults.reach("mid-move")

        try:
            moved = move_no_clobber(job.claimed.path, destination.parent, destination.name, placed=placed)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not job.claimed.path.exists():
                self.work.check()  # the whole inbox gone (a share that dropped) is not "moved"
                self.work.release(job.claimed)  # moved already, before a crash
                return
            raise TransientError(
                f"cannot file {job.claimed.source} into {destination.parent}: {exc.strerror or exc}"
            ) from exc
        except TransientError:
            raise
        except Exception as exc:
            self._file_as_failed(job, contain("filing", job.claimed.source, exc))
            return
        self.work.release(job.claimed)
        verdict = job.label if job.outcome == "screened" else job.outcome
        extra = f" ({job.reason})" if job.reason else ""
        log.info("%s: %s%s -> %s", job.claimed.source, verdict, extra, moved)

    def _file_as_failed(self, job: _Job, reason: str) -> None:
        """Something unexpected stopped the planned move (or its sidecar): the file goes to
        failed/ instead, its audit row saying so. Should that fail too, the file stays claimed
        until the next start, which tries again."""
        job.outcome, job.reason = "failed", reason
        target = self.folders.failed_folder(datetime.now(UTC)) / job.claimed.name
        self.store.refile(job.event_id, reason=reason, destination_path=str(target))

        def placed(moved: Path) -> None:
            if moved != target:
                self.store.set_destination(job.event_id, str(moved))
            details = {"reason": reason, "source": job.claimed.source, "sha256": job.sha256}
            try:
                write_error_sidecar(moved, {**details, "at": datetime.now(UTC).isoformat()})
            except Exception as exc:
                log.warning(
                    "%s: no error sidecar (%s: %s); the audit row has the reason",
                    moved,
                    type(exc).__name__,
                    exc,
                )

        try:
            moved = move_no_clobber(job.claimed.path, target.parent, target.name, placed=placed)
        except TransientError:
            raise
        except Exception as exc:
            log.error(
                "%s: cannot file it into %s either (%s: %s); it stays claimed until the next start",
                job.claimed.source,
                target.parent,
                type(exc).__name__,
                exc,
            )
            return
        self.work.release(job.claimed)
        log.info("%s: failed (%s) -> %s", job.claimed.source, reason, moved)
