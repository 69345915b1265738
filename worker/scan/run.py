"""What both scan engines share: the archive walk as a source of the runner.

A scan is the runner (``worker/pipeline/runner.py``) with the archive walk as its source and
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
from collections.abc import Sequence

from worker.pipeline.commit import Committer, Outputs
from worker.pipeline.counts import Counts
from worker.pipeline.item import Item
from worker.pipeline.observe import Observer
from worker.pipeline.ports import Provenance, Sink, Store
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
    """A scan as a source of the runner (``ports.Source``): its committer and counts, the skip
    index, ``stop()`` and the limit of one run.

    ``screening`` is the ``Predictor`` (local engine) or ``RayScreening`` (Ray engine);
    ``sinks`` (``--output``) get each batch's items once they are committed;
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
        sinks: Sequence[Sink] = (),
        retry: RetryPolicy | None = None,
        outputs: Outputs | None = None,
        observer: Observer | None = None,
    ):
        self._stop = threading.Event()
        self.observer = observer or Observer()
        self.store = store
        self.progress = progress
        self.sinks = list(sinks)
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

    def fresh(self, found: Sequence[FoundFile]) -> list[FoundFile]:
        """The files of ``found`` to read: not in the skip index for this model with their
        size and mtime, and (with a limit) no more than it leaves. Counts the skipped ones."""
        model_sha = str(self.committer.screening.model.sha256)
        paths = [str(f.path) for f in found]
        stamps = self.committer.retrying(lambda: self.store.scan_index(paths, model_sha))
        fresh = []
        for file in found:
            stamp = stamps.get(str(file.path))
            if stamp is None or (stamp.size, stamp.mtime_ns) != (file.size, file.mtime_ns):
                fresh.append(file)
        self.counts.skipped += len(found) - len(fresh)
        if self.limit is not None:
            fresh = fresh[: max(0, self.limit - self._planned)]
        self._planned += len(fresh)
        if self.progress:
            self.progress.update(self.counts)
        return fresh

    # -- ports.Source ------------------------------------------------------------------

    def admit(self, decided: list[Item]) -> list[Item]:
        """A scan commits every decided file (nothing is claimed that another could take)."""
        return decided

    def finished(self, recorded: Sequence[Item]) -> None:
        """Committed: the files stay where they are (the skip index rows went with them)."""
        if self.progress:
            self.progress.update(self.counts)
