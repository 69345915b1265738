"""The results database in memory: a ``Store`` (``worker/pipeline/ports.py``) without SQL.

``MemoryStore`` answers the pipeline's questions as ``worker.db.store.Store`` does on SQLite
or PostgreSQL (tests/integration/test_store_contract.py runs the same tests on all three):
one result per (content, model), the first kept; one audit row per event id, the first
kept; one skip-index row per (path, model), the latest kept; one outbox object per (SOP
Instance UID, destination), the first kept; the schema's checks, so a batch the database
would refuse is refused here too, and nothing of it is kept. The unit tier runs the real
daemon, scan and pipeline stages on it, in milliseconds.

Made for tests, as procrastinate's ``testing.py`` is: ``down`` makes every call raise
``TransientError`` (an outage); ``refused`` holds contents whose result a batch may not
hold (a row the database refuses, not transiently); ``commits`` counts committed batches.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from worker.db.outbox import OutboxItem
from worker.db.store import (
    AuditRecord,
    BatchSummary,
    FileStamp,
    FilingPlan,
    ResultRecord,
    ScannedRecord,
    StoredResult,
)
from worker.errors import TransientError
from worker.names import as_text
from worker.outcome import Outcome


class MemoryStore:
    """The results database's interface, in memory, with ``Store``'s idempotence and checks."""

    def __init__(self) -> None:
        self.results: dict[tuple[str, str], ResultRecord] = {}  # (model, content) -> result
        self.audits: dict[uuid.UUID, AuditRecord] = {}
        self.scanned: dict[tuple[str, str], ScannedRecord] = {}  # (path, model) -> index row
        self.outbox: dict[tuple[str, str], OutboxItem] = {}  # (SOP Instance UID, destination)
        self.down = False
        self.refused: set[str] = set()
        self.commits = 0
        self._ids: dict[tuple[str, str], int] = {}  # each result's row id, as a database numbers them
        self._linked: dict[tuple[str, str], tuple[str, str] | None] = {}  # outbox key -> result key

    def _up(self) -> None:
        if self.down:
            raise TransientError("database unavailable: connection refused")

    def require_head(self) -> None:
        self._up()

    def close(self) -> None:
        pass

    def record_batch(
        self,
        results: Sequence[ResultRecord],
        audits: Sequence[AuditRecord],
        scanned: Sequence[ScannedRecord] = (),
        *,
        outbox: Sequence[OutboxItem] = (),
        before_commit: Callable[[], None] | None = None,
    ) -> BatchSummary:
        """All of the batch, or nothing: ``ValueError`` for a row the database would refuse,
        ``TransientError`` while ``down``."""
        self._up()
        for r in results:
            _check_result(r, self.refused)
        for a in audits:
            _check_audit(a)
        for s in scanned:
            _check_time(s.recorded_at)
        rows = {(r.model_sha256, r.content_sha256): r for r in results}  # the batch's last, like Store
        new_results = {key: r for key, r in rows.items() if key not in self.results}
        new_audits: dict[uuid.UUID, AuditRecord] = {}
        for a in audits:
            if a.event_id not in self.audits:
                new_audits.setdefault(a.event_id, a)
        objects = {(o.sop_instance_uid, o.destination): o for o in outbox}
        if before_commit is not None:
            before_commit()
        for key, r in new_results.items():
            self.results[key] = r
            self._ids[key] = len(self._ids) + 1
        self.audits.update(new_audits)
        for s in scanned:
            self.scanned[(s.path, s.model_sha256)] = s
        for key, o in objects.items():
            if key not in self.outbox:
                self.outbox[key] = o
                self._linked[key] = self._result_of(o)
        self.commits += 1
        return BatchSummary(len(new_results), len(rows) - len(new_results), len(new_audits))

    def known_results(self, content_sha256s: Iterable[str], model_sha256: str) -> dict[str, StoredResult]:
        self._up()
        found = {}
        for sha in set(content_sha256s):
            r = self.results.get((model_sha256, sha))
            if r is not None:
                found[sha] = StoredResult(
                    self._ids[(model_sha256, sha)],
                    sha,
                    r.label,
                    r.positive,
                    r.positive_probability,
                    r.probabilities,
                    r.finished_at.astimezone(UTC),  # the same instant, in UTC, as a database gives it
                )
        return found

    def reported_by_other_models(self, content_sha256s: Iterable[str], model_sha256: str) -> dict[str, str]:
        self._up()
        wanted, found = set(content_sha256s), {}
        reported = {
            key for o_key, key in self._linked.items() if key is not None and self.outbox[o_key].kind == "sr"
        }
        for model, sha in sorted(reported, key=lambda k: (self.results[k].finished_at, self._ids[k])):
            if sha in wanted and model != model_sha256:
                found[sha] = model  # the latest wins
        return found

    def scan_index(self, paths: Iterable[str], model_sha256: str) -> dict[str, FileStamp]:
        self._up()
        return {p: FileStamp(s.size, s.mtime_ns) for p in paths if (s := self.scanned.get((p, model_sha256)))}

    def plans_of(self, event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, FilingPlan]:
        self._up()
        return {
            e: FilingPlan(a.destination_path, str(a.outcome), a.reason, a.content_sha256)
            for e in event_ids
            if (a := self.audits.get(e)) is not None and a.destination_path is not None
        }

    def set_destination(self, event_id: uuid.UUID, destination_path: str) -> None:
        self._up()
        if event_id in self.audits:  # an unknown event: nothing to correct, as an UPDATE
            self.audits[event_id] = replace(self.audits[event_id], destination_path=destination_path)

    def refile(self, event_id: uuid.UUID, *, reason: str, destination_path: str) -> None:
        self._up()
        if event_id in self.audits:
            self.audits[event_id] = replace(
                self.audits[event_id],
                outcome=Outcome.FAILED,
                reason=reason,
                destination_path=destination_path,
            )

    def _result_of(self, item: OutboxItem) -> tuple[str, str] | None:
        """The stored result an outbox object is linked to: by ``result_key``, or ``result_id``."""
        if item.result_id is not None:
            return next((key for key, i in self._ids.items() if i == item.result_id), None)
        if item.result_key is not None and item.result_key in self.results:
            return item.result_key
        return None

    # -- what tests read back ---------------------------------------------------------

    def outcomes(self) -> dict[str, str]:
        """Audit outcomes by file name (as stored: text with ``\\xNN`` escapes)."""
        return {as_text(Path(a.source_path).name): a.outcome for a in self.audits.values()}


def _check_result(r: ResultRecord, refused: set[str]) -> None:
    """The results table's checks (``worker/db/schema.py``)."""
    if r.content_sha256 in refused:
        raise ValueError("value too long for type character varying")
    if len(r.content_sha256) != 64 or len(r.model_sha256) != 64:
        raise ValueError(
            f"a result's SHA-256 must be 64 characters: {r.content_sha256!r}, {r.model_sha256!r}"
        )
    for at in (r.queued_at, r.started_at, r.finished_at):
        _check_time(at)
    if r.width <= 0 or r.height <= 0:
        raise ValueError(f"a result's image has no size: {r.width}x{r.height}")


def _check_audit(a: AuditRecord) -> None:
    """The audit table's checks (``worker/db/schema.py``)."""
    _check_time(a.at)
    if a.outcome not in set(Outcome):
        raise ValueError(f"unknown outcome {a.outcome!r}")
    if a.outcome in (Outcome.FAILED, Outcome.OUT_OF_SCOPE) and a.reason is None:
        raise ValueError(f"a {a.outcome} audit row needs a reason")
    if a.outcome != Outcome.FAILED and a.content_sha256 is None:
        raise ValueError(f"a {a.outcome} audit row needs its content's SHA-256")


def _check_time(at: datetime | None) -> None:
    """Times are stored as instants: a naive one is refused, as ``Store``'s column type does."""
    if at is not None and at.tzinfo is None:
        raise ValueError(f"naive datetime {at.isoformat()} refused: say its time zone")
