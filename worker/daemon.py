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
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.errors import TransientError
from worker.names import for_log
from worker.outcome import Outcome
from worker.pipeline.commit import Committer, Outputs
from worker.pipeline.counts import Counts
from worker.pipeline.item import Item
from worker.pipeline.observe import FaultPoint, Observer
from worker.pipeline.ports import Screening, Sink, Store
from worker.pipeline.runner import Runner
from worker.runtime.boundary import contain
from worker.runtime.faults import Faults
from worker.runtime.lease import Heartbeat, beat_interval
from worker.runtime.retry import Backoff, wait
from worker.runtime.sdnotify import Notifier
from worker.sinks.filer import Filer, Folders
from worker.sources.claim import Claimed, WorkArea
from worker.sources.inbox import Inbox

log = logging.getLogger(__name__)
WINDOW_BATCHES = 4
# A file that cannot be read (an I/O error, not its content) stays claimed and is tried again
# at later steps; after this many attempts in a row it is filed into failed/ with the reason.
READ_ATTEMPTS = 3


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
        predictor: Screening,
        store: Store,
        folders: Folders,
        batch_size: int,
        max_wait: float = 0.2,
        worker_host: str,
        notifier: Notifier | None = None,
        status_interval: float = 30.0,
        lease_seconds: float = 600.0,
        faults: Faults | None = None,
        heatmapper: Any = None,
        sinks: Sequence[Sink] = (),
        outputs: Outputs | None = None,
        observer: Observer | None = None,
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
        # With the commit: the outbox rows of each result (PACS, RIS, EHR: app.open_sinks).
        self.committer = Committer(
            store=store,
            screening=predictor,
            worker_host=worker_host,
            worker_id=work.worker_id,
            destination=lambda item: folders.destination(item, item.source.name),
            before_commit=lambda: self.faults.reach("in-commit"),
            outputs=outputs,
        )
        self.filer = Filer(store, folders, reach=lambda point: self.faults.reach(point))
        # Metrics and notifications (worker/pipeline/observe.py): told of each committed batch.
        self.observer = observer or Observer()
        self.runner = Runner(
            screening=predictor,
            committer=self.committer,
            source=self,
            commit_size=self.window,  # one commit per step: its costs paid once for the window
            sinks=sinks,
            middleware=[FaultPoint(self.faults, "after-commit"), self.observer],
            heatmapper=heatmapper,  # a heatmap for the films [explain] names, after screening
            rate=True,
        )
        self._queue: deque[Claimed] = deque()
        self._internal: dict[str, str] = {}  # claim token -> why its file fails (an internal error)
        self._attempts: dict[str, int] = {}  # claim token -> failed reads in a row
        self._retry: list[Claimed] = []  # this step's files to read again at a later one
        self._stop = threading.Event()
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
        self.observer.started()
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
            self.runner.close()
            self.work.close()
            log.info("stopped: %s", self.status())
            self.observer.stopped()

    def _idle_timeout(self) -> float:
        waits = [self.inbox.next_check_in(), self.status_interval, self._next_adoption - time.monotonic()]
        if self._queue:
            waits.append(max(0.0, self._queue[0].claimed_at + self.max_wait - time.time()))
        if self.notifier.watchdog_interval:
            waits.append(self.notifier.watchdog_interval)
        return max(0.01, min(waits))

    @property
    def counts(self) -> Counts:
        return self.committer.counts

    @property
    def claimed(self) -> int:
        """Files claimed and not yet filed (the metrics' gauge; any thread may read it)."""
        return len(self._queue)

    def status(self) -> str:
        c = self.counts
        return (
            f"{c.screened} screened, {c.duplicates} duplicates, {c.out_of_scope.total()} out of scope, "
            f"{c.failed.total()} failed; "
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
        self._retry = []
        self.process(batch)  # raises TransientError with the batch still queued
        for _ in batch:
            self._queue.popleft()
        self._queue.extend(self._retry)  # behind the files waiting: a pause before the next read
        return len(batch) - len(self._retry)

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
        """Screen, commit and file one batch: the runner (``worker/pipeline/runner.py``) with
        this inbox as its source. Files committed before a crash are only filed; files that
        could not be read just now stay claimed, in ``self._queue``, for a later step."""
        items = [self._item(c) for c in batch]
        plans = self.store.plans_of([i.event_id for i in items])
        for item in items:
            plan = plans.get(item.event_id)
            if plan is not None:  # committed before a crash: only the move is left
                item.outcome, item.reason, item.sha256 = (
                    Outcome(plan.outcome),
                    plan.reason,
                    plan.content_sha256,
                )
                self._file(item, Path(plan.destination_path))
        todo = [i for i in items if i.event_id not in plans]
        if todo:
            self.runner.run([todo])

    # -- ports.Source: what the runner asks the inbox ----------------------------------

    def admit(self, decided: list[Item]) -> list[Item]:
        """The decided files to commit now: not those another worker took over, nor those to
        read again later. ``TransientError`` when the inbox itself is gone (a share that
        dropped: its files are unreadable, not failed)."""
        self.work.check()
        return [i for i in self._still_mine(decided) if not self._try_again_later(i)]

    def finished(self, recorded: Sequence[Item]) -> None:
        """Committed: each file to its recorded destination, and its claim forgotten."""
        for item in recorded:
            self._file(item, Path(item.destination or ""))
            self._internal.pop(item.source.token, None)
            self._attempts.pop(item.source.token, None)

    def _item(self, claimed: Claimed) -> Item:
        item = Item(
            path=claimed.path,
            name=str(self.work.inbox / claimed.source),
            event_id=event_id_for(claimed),
            source=claimed,
            queued_at=datetime.fromtimestamp(claimed.claimed_at, UTC),
        )
        if claimed.token in self._internal:  # its claim went wrong (see _claim)
            item.fail(self._internal[claimed.token])
        return item

    def _try_again_later(self, item: Item) -> bool:
        """A file that could not be read just now stays claimed for another attempt, up to
        ``READ_ATTEMPTS`` in a row; then it is filed into failed/ like any other failure."""
        if not item.retry:
            return False
        token = item.source.token
        attempts = self._attempts[token] = self._attempts.get(token, 0) + 1
        if attempts >= READ_ATTEMPTS:
            log.warning("%s: %s, %d times: giving up on it", item.source.source, item.reason, attempts)
            return False
        log.warning(
            "%s: %s; trying it again later (attempt %d of %d)",
            item.source.source,
            item.reason,
            attempts,
            READ_ATTEMPTS,
        )
        self._retry.append(item.source)
        return True

    def _still_mine(self, items: list[Item]) -> list[Item]:
        """The jobs whose file is still in the work area. One that is gone was adopted by a
        worker that took this one for dead (silent for longer than the lease): it is that
        worker's now, and recording it here (as unreadable) would send it to failed/."""
        mine = []
        for item in items:
            if os.path.lexists(item.path):
                mine.append(item)
            else:
                log.warning("%s: taken over by another worker; leaving it to that one", item.source.source)
        return mine

    def _file(self, item: Item, destination: Path) -> None:
        """Move the claimed file to its recorded destination, then forget the claim."""
        claimed: Claimed = item.source
        try:
            moved = self.filer.file(item, destination, claimed.name)
        except FileNotFoundError:
            self.work.check()  # the whole inbox gone (a share that dropped) is not "moved"
            self.work.release(claimed)  # moved already, before a crash
            return
        if moved is not None:
            self.work.release(claimed)
