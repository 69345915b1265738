"""Committing decided items: where a result is committed, for every way files come in.

``Committer.commit(items)`` writes, in one transaction, the result row of each screened
item, one audit row per item (with the destination the inbox will move it to, or none for
a scan), and, for a scan, the skip index's rows. Rows are idempotent (``Store.record_batch``),
so a retried commit cannot write anything twice.

Should the batch be refused for a reason no retry fixes (a row of one file the database
will not take), each item is committed alone; an item whose rows are still refused is
recorded as failed (an internal error, worth another try), with no result, and one that
cannot be recorded even so is left out: it stays where its source finds it again (claimed
in the inbox; not indexed by a scan). ``TransientError`` (the database unavailable) is
retried with the committer's ``RetryPolicy``; when it gives up, nothing of the batch is
committed and the error reaches the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from worker.db.outbox import OutboxItem
from worker.db.store import AuditRecord, ResultRecord, ScannedRecord
from worker.errors import TransientError
from worker.outcome import Outcome
from worker.pipeline.counts import Counts
from worker.pipeline.item import Item, now
from worker.pipeline.ports import Provenance, Store
from worker.pipeline.records import result_record
from worker.runtime.boundary import contain
from worker.runtime.retry import RetryPolicy, retrying

log = logging.getLogger(__name__)
T = TypeVar("T")
# What a batch's results become besides their rows (PACS objects for the outbox), built from
# each screened item (its file still where the pipeline has it) and its result record; see
# worker/sinks/pacs.py.
Outputs = Callable[[Sequence[tuple[Item, ResultRecord]]], Sequence[OutboxItem]]
NO_RETRY = RetryPolicy(attempts=1)  # the caller's loop waits and retries (the daemon's)


def join_outputs(outputs: Sequence[Outputs]) -> Outputs | None:
    """Several ``Outputs`` as one (None: none): each batch's outbox rows, from each in turn."""
    if len(outputs) <= 1:
        return outputs[0] if outputs else None
    return lambda screened: [row for out in outputs for row in out(screened)]


def log_batch(items: Sequence[Item], started: float, *, rate: bool = True) -> None:
    """The one line per batch, once its files are done (committed, and filed where they move):
    ``batch: 64 files (59 screened, 2 duplicates, 1 out of scope, 2 failed) in 0.41 s, 156.1 images/s``.
    ``started``: when the batch began (``time.perf_counter()``); without ``rate`` (a scan,
    whose batches overlap the model) only the time since then is given."""
    seconds = time.perf_counter() - started
    counts = (
        len(items),
        sum(i.outcome is Outcome.SCREENED for i in items),
        sum(i.outcome is Outcome.DUPLICATE for i in items),
        sum(i.outcome is Outcome.OUT_OF_SCOPE for i in items),
        sum(i.outcome is Outcome.FAILED for i in items),
    )
    line = "batch: %d files (%d screened, %d duplicates, %d out of scope, %d failed) in %.2f s"
    if rate:
        log.info(line + ", %.1f images/s", *counts, seconds, len(items) / seconds if seconds > 0 else 0.0)
    else:
        log.info(line.replace(" in ", " committed in "), *counts, seconds)


class Committer:
    """Commits batches of decided items and counts what was committed.

    ``screening`` is what screened them: it has ``model``, ``threshold`` and
    ``device_name``, like a ``Predictor``. ``destination(item)`` says where the item's file
    will be moved (None: nowhere); ``index`` also writes a scan's skip-index rows;
    ``outputs([(item, result), ...])`` gives the objects the screened items' results are
    queued with, in the same transaction (retried like the database while it is unavailable).
    """

    def __init__(
        self,
        *,
        store: Store,
        screening: Provenance,
        worker_host: str,
        worker_id: str,
        retry: RetryPolicy = NO_RETRY,
        stop: threading.Event | None = None,
        destination: Callable[[Item], str | None] | None = None,
        index: bool = False,
        before_commit: Callable[[], None] | None = None,
        outputs: Outputs | None = None,
    ):
        self.store = store
        self.screening = screening
        self.worker_host = worker_host
        self.worker_id = worker_id
        self.retry = retry
        self.stop = stop or threading.Event()  # ends any wait for a retry at once
        self.destination = destination or (lambda _item: None)
        self.index = index
        self.before_commit = before_commit
        self.outputs = outputs
        self.counts = Counts()

    def commit(self, items: Sequence[Item]) -> list[Item]:
        """Commit ``items``; the ones recorded (all, unless some were refused), counted."""
        try:
            *rows, outbox = self._rows(items)
            self.retrying(
                lambda: self.store.record_batch(*rows, outbox=outbox, before_commit=self.before_commit)
            )
            recorded = list(items)
        except TransientError:
            raise
        except Exception as exc:
            log.warning(
                "cannot record the batch (%s: %s); recording its files one by one", type(exc).__name__, exc
            )
            recorded = self._one_by_one(items)
        for item in recorded:
            assert item.outcome is not None
            self.counts.add(item.outcome, positive=item.positive, reason=item.reason)
        return recorded

    def retrying(self, call: Callable[[], T]) -> T:
        """``call()``, again after the policy's pause while the database is unavailable; then
        give up (``TransientError``). ``stop`` ends a pause at once."""
        attempts = self.retry.attempts

        def describe(exc: BaseException, delay: float, attempt: int) -> str:
            return f"{exc}; retrying in {delay:.1f} s (attempt {attempt} of {attempts or 'unlimited'})"

        return retrying(call, self.retry, self.stop, describe=describe)

    # -- rows --------------------------------------------------------------------------

    def _rows(
        self, items: Sequence[Item]
    ) -> tuple[list[ResultRecord], list[AuditRecord], list[ScannedRecord], list[OutboxItem]]:
        """The batch's rows and objects. An item whose result row cannot be built fails
        (internal error)."""
        screened: list[tuple[Item, ResultRecord]] = []
        for item in items:
            if item.outcome is Outcome.SCREENED:
                try:
                    screened.append((item, self._result(item)))
                except Exception as exc:
                    item.fail(contain("recording the result of", item.name, exc), retry=True)
        outputs, outbox = self.outputs, []
        if outputs is not None and screened:
            outbox = list(self.retrying(lambda: outputs(screened)))
        audits = [self._audit(item) for item in items]
        scanned = [self._scanned(item) for item in items if self.index and not item.retry]
        return [result for _, result in screened], audits, scanned, outbox

    def _one_by_one(self, items: Sequence[Item]) -> list[Item]:
        recorded = []
        for item in items:
            try:
                self.retrying(lambda item=item: self._record_alone(item))
                recorded.append(item)
                continue
            except TransientError:
                raise
            except Exception as exc:
                item.fail(contain("recording", item.name, exc), retry=True)
            try:
                self.retrying(lambda item=item: self._record_alone(item))
            except TransientError:
                raise
            except Exception as exc:
                log.error(
                    "%s: cannot record it even as failed (%s: %s); it is tried again later",
                    item.name,
                    type(exc).__name__,
                    exc,
                )
                continue
            recorded.append(item)
        return recorded

    def _record_alone(self, item: Item) -> None:
        *rows, outbox = self._rows([item])
        self.store.record_batch(*rows, outbox=outbox)

    def _result(self, item: Item) -> ResultRecord:
        assert item.prediction is not None and item.sha256 is not None
        return result_record(
            self.screening,
            item.prediction,
            item.sha256,
            queued_at=item.queued_at,
            started_at=item.started_at,
            finished_at=item.finished_at or now(),
            heatmap_path=str(item.heatmap_path) if item.heatmap_path else None,
        )

    def _audit(self, item: Item) -> AuditRecord:
        assert item.outcome is not None
        if item.finished_at is None:
            item.finished_at = now()
        item.destination = self.destination(item)  # decided, and recorded, before it moves
        return AuditRecord(
            source_path=item.name,
            file_size=item.size if item.size is not None else getattr(item.source, "size", None),
            content_sha256=item.sha256,
            outcome=item.outcome,
            worker_host=self.worker_host,
            worker_id=self.worker_id,
            reason=item.reason,
            destination_path=item.destination,
            model_sha256=str(self.screening.model.sha256),
            at=item.finished_at,
            event_id=item.event_id,  # fixed per file: a retried commit cannot log it twice
        )

    def _scanned(self, item: Item) -> ScannedRecord:
        found = item.source  # the walk's ``FoundFile``: size and mtime as the walk saw them
        return ScannedRecord(
            path=item.name,
            model_sha256=str(self.screening.model.sha256),
            size=found.size,
            mtime_ns=found.mtime_ns,
            content_sha256=item.sha256,
            outcome=item.outcome or Outcome.FAILED,
        )
