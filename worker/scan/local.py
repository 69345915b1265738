"""The archive scan: screen every file below some folders, read-only, resumably.

The runner (``worker/pipeline/runner.py``) with the archive walk as its source: the same
``Predictor`` (decode pool, batching, device), the same result records, the same
transaction as ``watch``. What differs is where files come from and what happens to them
afterwards: nothing. Files are found by a streaming walk, and never moved, renamed or
written.

The walk is cut into chunks of ``batch_size`` files, and each chunk is first looked up in
the skip index (``scanned_files``): a file whose path, size and mtime are recorded for this
model is not even opened. The rest go to the runner, which hashes them (the next chunk
while this one is screened), settles known content, streams the rest through one long
``Predictor.predict`` call and commits each batch of verdicts with the files' index rows.

So a scan stopped at any point (Ctrl-C, a crash, a reboot) resumes at its last commit.
Unreadable files (an I/O error, permission denied) are recorded but not indexed: the next
run tries them again. Undecodable files are indexed like the others, and skipped until
their size or mtime changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from worker.db.store import chunks
from worker.pipeline.counts import Counts
from worker.pipeline.item import Item
from worker.pipeline.ports import Screening
from worker.pipeline.runner import Runner
from worker.scan.run import ScanRun, scan_item
from worker.sources.walk import FoundFile

log = logging.getLogger(__name__)


class Scanner(ScanRun):
    """Screens ``files`` into ``store``; ``run()`` until they are done, ``stop()`` from a signal."""

    def __init__(
        self,
        *,
        files: Iterable[FoundFile],
        predictor: Screening,
        batch_size: int | None = None,
        heatmapper: Any = None,
        **run: Any,  # ScanRun's store, worker_host, limit, progress, sinks, retry, outputs, observer
    ):
        super().__init__(screening=predictor, **run)
        self.files = iter(files)
        self.predictor = predictor
        self.batch_size = batch_size or predictor.batch_size
        self.runner = Runner(
            screening=predictor,
            committer=self.committer,
            source=self,
            commit_size=self.batch_size,
            sinks=self.sinks,
            middleware=[self.observer],
            heatmapper=heatmapper,
            stop=self._stop,
            read_ahead=self.limit is None,  # with a limit, no file beyond it is read
        )

    def run(self) -> Counts:
        """Scan until the files run out, the limit is reached or ``stop()``; ``TransientError`` if
        the database stays unavailable (everything committed before stays)."""
        model = self.predictor.model
        log.info("scanning with %s (%s) on %s", model.name, model.sha256[:12], self.predictor.device_name)
        try:
            self.runner.run(self._chunks())
        finally:
            self.runner.close()
        return self.counts

    def _chunks(self) -> Iterator[list[Item]]:
        """The walk, a batch at a time, less what the skip index says is unchanged."""
        for found in chunks(self._found(), self.batch_size):
            yield [scan_item(f) for f in self.fresh(found)]

    def _found(self) -> Iterator[FoundFile]:
        for found in self.files:
            if self._stop.is_set() or self.at_limit:
                return
            yield found
