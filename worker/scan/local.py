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
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.answers import Answer
from worker.db.store import chunks
from worker.pipeline.counts import Counts
from worker.pipeline.item import Item
from worker.pipeline.ports import Screening
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
        **run: Any,  # ScanRun's store, worker_host, limit, progress, on_commit, retry, outputs
    ):
        super().__init__(screening=predictor, **run)
        self.files = iter(files)
        self.predictor = predictor
        self.batch_size = batch_size or predictor.batch_size
        self.heatmapper = heatmapper  # a heatmap for the films [explain] names, after screening
        self._screening: deque[Item] = deque()  # handed to the predictor, in its order
        self._ready: list[Item] = []  # decided, waiting for the next commit
        self._committer: ThreadPoolExecutor | None = None
        self._committing: Future[None] | None = None  # the commit in flight, if any

    def run(self) -> Counts:
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
                for answer, heatmap in self._annotate(self.predictor.predict(self._feed(hashers))):
                    item = self._screening.popleft()
                    assert answer.path == item.path, (answer.path, item.path)
                    self._decide(item, answer)
                    item.heatmap_path = heatmap
                    if len(self._ready) >= self.batch_size:
                        self._commit_soon()
                self._commit_soon()
            finally:
                self._wait_for_commit()
        return self.counts

    def _annotate(self, answers: Iterator[Answer]) -> Iterator[tuple[Answer, Path | None]]:
        """Each answer with its heatmap's path (None: none); see ``Heatmapper.annotate``."""
        if self.heatmapper is None:
            return ((answer, None) for answer in answers)
        return self.heatmapper.annotate(answers, window=self.batch_size)

    def _commit_soon(self) -> None:
        """Hand the decided files to the commit thread, so the model need not wait for the
        database; commits stay one at a time and in order (the previous one is awaited, and
        its error, if any, raised here)."""
        items, self._ready = self._ready, []
        self._wait_for_commit()
        if items:
            self._committing = self._committer.submit(self.commit, items)

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
                for item in self._settle(read):
                    self._screening.append(item)
                    yield item.path
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
        paths = [str(f.path) for f in chunk]
        stamps = self.committer.retrying(lambda: self.store.scan_index(paths, model_sha))
        fresh = []
        for found in chunk:
            stamp = stamps.get(str(found.path))
            if stamp is None or (stamp.size, stamp.mtime_ns) != (found.size, found.mtime_ns):
                fresh.append(found)
        skipped = len(chunk) - len(fresh)
        if self.limit is not None:  # no read-ahead with a limit: _planned is current here
            fresh = fresh[: max(0, self.limit - self._planned)]
        items = list(hashers.map(Item.hash, [scan_item(found) for found in fresh]))
        return _Read(items, skipped)

    def _settle(self, read: _Read) -> list[Item]:
        """Settle failures and duplicates (``ScanRun.settle``); return what needs the model."""
        self.counts.skipped += read.skipped
        self._planned += len(read.items)
        to_screen, decided = self.settle(read.items)
        self._ready += decided
        return to_screen

    def _decide(self, item: Item, answer: Answer) -> None:
        self._ready += self.settler.decide(item, answer, self.predictor.model.positive_class)


@dataclass
class _Read:
    """A chunk of found files, looked up in the skip index and hashed."""

    items: list[Item]
    skipped: int
