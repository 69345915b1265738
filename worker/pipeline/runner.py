"""The screening sequence, written once: hash -> settle -> decode -> gate -> infer -> decide ->
commit -> sinks, for every source.

A source (the inbox daemon, the archive walk, the Ray driver) hands ``Runner.run`` its work
as chunks of ``Item``s, and answers two questions (``ports.Source``): which decided items
may be committed now (``admit``), and what becomes of their files once they are
(``finished``: the inbox files them; a scan leaves them where they are). Everything between
is here, in this order:

1. hash every chunk's unhashed items in a thread pool (``Item.hash``); with ``read_ahead``,
   the next chunk is taken from the source and hashed while this one is screened;
2. settle them (``Settler``): content this model already has a result for is a duplicate,
   content met again in this run waits for (or copies) the first verdict;
3. stream the rest through the screening (``ports.Screening.predict``: decode, gate,
   infer, calibrate, classify), with heatmaps for the films [explain] names;
4. decide each item by its answer (its twins with it);
5. commit decided items ``commit_size`` at a time, in a commit thread so the model never
   waits for the database (one commit at a time, in order; an error is raised in the
   runner's thread at the next commit or at the end);
6. after each commit: the middleware, in order (``worker/pipeline/observe.py``: the chaos
   harness's crash point, then ``Observers``, the fault boundary around metrics and
   webhooks, where one that raises is logged and screening goes on), then every sink
   (``ports.Sink``: ``--output``, ...), then the source's ``finished``, then the batch's log
   line.

A sink that raises is contained (logged with the item, never propagated): a results file or
a webhook never stops screening. ``TransientError`` from the database is the exception:
nothing of that batch is committed and the error reaches the source (the daemon waits and
retries its batch; a scan stops with exit 75).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from worker.answers import Answer
from worker.pipeline.commit import Committer, log_batch
from worker.pipeline.counts import Counts
from worker.pipeline.item import Item
from worker.pipeline.observe import Committed, Observer
from worker.pipeline.ports import Screening, Sink, Source
from worker.pipeline.settle import Settler
from worker.runtime.boundary import contain

log = logging.getLogger(__name__)


class Runner:
    """Runs a source's chunks through the pipeline; ``run()`` until they end or ``stop``.

    ``commit_size``: decided items per commit (the inbox commits its whole window at once);
    ``read_ahead``: take and hash the next chunk while this one is screened (not with a
    ``--limit``: no file beyond it may be read); ``rate``: the batch's log line gives
    images/s (a scan's commits overlap the model, so a rate per commit would mislead).
    """

    def __init__(
        self,
        *,
        screening: Screening,
        committer: Committer,
        source: Source,
        commit_size: int,
        sinks: Sequence[Sink] = (),
        middleware: Sequence[Observer] = (),
        heatmapper: Any = None,
        stop: threading.Event | None = None,
        read_ahead: bool = False,
        rate: bool = False,
    ):
        self.screening = screening
        self.committer = committer
        self.source = source
        self.commit_size = commit_size
        self.sinks = list(sinks)
        self.middleware = list(middleware)
        self.heatmapper = heatmapper  # worker/explain/heatmaps.py: annotate(answers, window)
        self.stop = stop or threading.Event()
        self.read_ahead = read_ahead
        self.rate = rate
        self._hashers = ThreadPoolExecutor(screening.workers, thread_name_prefix="hash")
        self._commits = ThreadPoolExecutor(1, thread_name_prefix="commit")
        self._settler = Settler()  # touched by the runner's thread only
        self._screening: deque[Item] = deque()  # handed to the screening, in its order
        self._ready: list[Item] = []  # decided, waiting for the next commit
        self._committed: deque[Item] = deque()  # filled by the commit thread, emptied by run()
        self._committing: Future[None] | None = None
        self._started = time.perf_counter()

    @property
    def counts(self) -> Counts:
        return self.committer.counts

    def close(self) -> None:
        self._hashers.shutdown()
        self._commits.shutdown()

    # -- the sequence ------------------------------------------------------------------

    def run(self, chunks: Iterable[list[Item]]) -> None:
        """Screen and commit every item of ``chunks``; returns when all are committed, or
        raises (what was committed stays committed; the rest is the source's to retry)."""
        self._started = time.perf_counter()
        self._settler = Settler()  # what was in flight in an earlier run is not any more
        self._screening.clear()
        self._ready = []
        positive_class = self.screening.model.positive_class
        try:
            answers = self._annotate(self.screening.predict(self._feed(iter(chunks))))
            for answer, heatmap in answers:
                item = self._screening.popleft()
                assert answer.path == item.path, (answer.path, item.path)
                self._ready += self._settler.decide(item, answer, positive_class)
                item.heatmap_path = heatmap
                if len(self._ready) >= self.commit_size:
                    self._commit_soon()
            self._commit_soon()
        finally:
            self._wait_for_commit()

    def _feed(self, chunks: Iterator[list[Item]]) -> Iterator[Path]:
        """Hashed and settled, the paths that need the model; the screening pulls them as it
        has room. Decided items (failures, duplicates) are committed without it."""
        with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as reader:
            ahead: Future[list[Item] | None] | None = None
            while True:
                if ahead is not None:
                    chunk, ahead = ahead.result(), None
                    if self.stop.is_set():
                        return  # taken and hashed, not settled: the next run reads it again
                else:
                    chunk = self._take(chunks)
                if chunk is None:
                    return
                if self.read_ahead and not self.stop.is_set():
                    ahead = reader.submit(self._take, chunks)
                for item in self._settle(chunk):
                    self._screening.append(item)
                    yield item.path
                if len(self._ready) >= self.commit_size:  # duplicates need no model to be committed
                    self._commit_soon()

    def _take(self, chunks: Iterator[list[Item]]) -> list[Item] | None:
        """The source's next chunk, hashed (reads overlap in the pool); None at the end."""
        chunk = next(chunks, None)
        if chunk is None:
            return None
        unhashed = [i for i in chunk if i.sha256 is None and not i.decided]
        list(self._hashers.map(Item.hash, unhashed))
        return chunk

    def _settle(self, chunk: list[Item]) -> list[Item]:
        """Decide failures and duplicates now (into the next commit); return what needs the model."""
        self._forget_committed()  # before the lookup: a content is in the settler or in the db
        new = self._settler.unknown(chunk)
        model_sha = str(self.screening.model.sha256)
        store = self.committer.store
        known = self.committer.retrying(lambda: store.known_results(new, model_sha)) if new else {}
        to_screen, decided = self._settler.settle(chunk, known)
        self._ready += decided
        return to_screen

    def _annotate(self, answers: Iterator[Answer]) -> Iterator[tuple[Answer, Path | None]]:
        """Each answer with its heatmap's path (None: none); maps are computed a window of
        films at a time, and a film that wants none is not held back for them."""
        if self.heatmapper is None:
            return ((answer, None) for answer in answers)
        return self.heatmapper.annotate(answers, window=self.screening.batch_size)  # type: ignore[no-any-return]

    # -- committing ----------------------------------------------------------------------

    def _commit_soon(self) -> None:
        """Hand the decided items the source admits to the commit thread. The previous commit
        is awaited first (its error raised here), so the source answers ``admit`` knowing
        everything before is finished."""
        items, self._ready = self._ready, []
        self._wait_for_commit()
        items = self.source.admit(items) if items else items
        if items:
            self._committing = self._commits.submit(self._commit, items)

    def _wait_for_commit(self) -> None:
        committing, self._committing = self._committing, None
        if committing is not None:
            committing.result()

    def _commit(self, items: list[Item]) -> None:
        """(Commit thread) The transaction, then the middleware, the sinks, the source."""
        started = time.perf_counter()
        recorded = self.committer.commit(items)
        batch = Committed(recorded, time.perf_counter() - started)
        for middleware in self.middleware:
            middleware.committed(batch)
        for sink in self.sinks:
            deliver(sink, recorded)
        self.source.finished(recorded)
        log_batch(recorded, self._started if self.rate else started, rate=self.rate)
        self._committed.extend(items)  # the settler forgets them, in the runner's thread

    def _forget_committed(self) -> None:
        committed = []
        while self._committed:
            committed.append(self._committed.popleft())
        self._settler.forget(committed)


def deliver(sink: Sink, items: Sequence[Item]) -> None:
    """Hand committed ``items`` to ``sink``: when the batch fails, one at a time, and an item
    that still fails is logged (the fault boundary, ``worker/runtime/boundary.py``); the
    others are delivered and screening goes on."""
    if not items:
        return
    try:
        sink.committed(items)
        return
    except Exception as exc:
        if len(items) == 1:
            contain(f"{type(sink).__name__} with", items[0].name, exc)
            return
    for item in items:
        try:
            sink.committed([item])
        except Exception as exc:
            contain(f"{type(sink).__name__} with", item.name, exc)
