"""What both scan engines share: the pipeline's settling and commit stages, set up for a scan.

A scan is the pipeline (``worker/pipeline``) with the archive walk as its source and
``--output`` as its sink: its audit rows name no destination (nothing moves), its commits
also write the skip index (``scanned_files``), and a database outage is waited out for
about two minutes (``SCAN_RETRY``) before the run stops with exit 75. The local engine
(``worker.scan.local``) and the Ray engine (``worker.scan.ray.driver``) differ only in how
files reach the model; the database cannot tell which engine screened a file, except by the
device column.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from worker.pipeline.commit import Committer, Outputs, log_batch
from worker.pipeline.counts import Counts
from worker.pipeline.item import Item
from worker.pipeline.observe import Committed, Observer
from worker.pipeline.ports import Provenance, Store
from worker.pipeline.settle import Settler
from worker.runtime.boundary import contain
from worker.runtime.retry import RetryPolicy
from worker.scan.progress import Progress
from worker.sources.walk import FoundFile

log = logging.getLogger("worker.scan")
WORKER_ID = "scan"  # audit rows written by scans say so in worker_id
# A scan gives up after 8 failed attempts in a row: about two minutes of database outage.
SCAN_RETRY = RetryPolicy(initial=1.0, maximum=60.0, attempts=8)


def scan_item(found: FoundFile) -> Item:
    """An archive file, as the pipeline carries it."""
    return Item(path=found.path, name=str(found.path), source=found)


class ScanRun:
    """The settler, the committer and its counts, ``stop()`` and the limit of one scan run.

    ``screening`` is the ``Predictor`` (local engine) or ``RayScreening`` (Ray engine);
    ``on_commit`` (``--output``) gets each batch's items once they are committed;
    ``outputs``: the PACS objects queued with each result (``worker/sinks/pacs.py``);
    ``observer`` is told of each committed batch (metrics: ``worker/pipeline/observe.py``).
    """

    def __init__(
        self,
        *,
        store: Store,
        screening: Provenance,
        worker_host: str,
        limit: int | None = None,
        progress: Progress | None = None,
        on_commit: Callable[[Sequence[Item]], None] | None = None,
        retry: RetryPolicy | None = None,
        outputs: Outputs | None = None,
        observer: Observer | None = None,
    ):
        self._stop = threading.Event()
        self.observer = observer or Observer()
        self.store = store
        self.progress = progress
        self.on_commit = on_commit
        self.limit = limit
        self.committer = Committer(
            store=store,
            screening=screening,
            worker_host=worker_host,
            worker_id=WORKER_ID,
            retry=retry or SCAN_RETRY,
            stop=self._stop,
            index=True,
            outputs=outputs,
        )
        self.settler = Settler()  # touched by the main thread only
        self._committed: deque[Item] = deque()  # filled by the commit thread, emptied by the main one
        self._planned = 0  # files read this run (the limit counts these)

    @property
    def counts(self) -> Counts:
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

    def settle(self, items: list[Item]) -> tuple[list[Item], list[Item]]:
        """(Main thread) ``(to_screen, decided)`` for hashed items (``Settler.settle``), with
        the database asked about contents not in flight in this run."""
        self._forget_committed()  # before the lookup: a content is in the settler or in the db
        new = self.settler.unknown(items)
        model_sha = str(self.committer.screening.model.sha256)
        known = self.committer.retrying(lambda: self.store.known_results(new, model_sha)) if new else {}
        return self.settler.settle(items, known)

    def commit(self, items: list[Item]) -> None:
        """(Commit thread) Commit ``items``, hand them to ``on_commit``, and tell the main
        thread (which alone touches the settler) which contents the database has now."""
        started = time.perf_counter()
        recorded = self.committer.commit(items)
        self.observer.committed(Committed(recorded, time.perf_counter() - started))
        log_batch(recorded, started, rate=False)
        if self.on_commit:
            self._report(recorded)
        self._committed.extend(items)
        if self.progress:
            self.progress.update(self.counts)

    def _forget_committed(self) -> None:
        committed = []
        while self._committed:
            committed.append(self._committed.popleft())
        self.settler.forget(committed)

    def _report(self, items: list[Item]) -> None:
        """Hand the committed items to ``on_commit``, one at a time when a batch of them fails:
        an item that cannot be written is logged, the rest are written."""
        assert self.on_commit is not None
        try:
            self.on_commit(items)
            return
        except Exception:
            if len(items) == 1:
                raise
        for item in items:
            try:
                self.on_commit([item])
            except Exception as exc:
                contain("writing the --output line of", item.name, exc)
