"""In-memory stand-ins for the heavy parts, implementing the same protocols as the real ones:
``FakePredictor`` (a ``Predictor``: no torch, no trained model) and ``MemoryStore`` (a
``Store``: no database). The unit tier runs the real daemon, scan and pipeline stages on
them, in milliseconds.

The fake model reads its verdict from the file's first line: ``PNEUMONIA 0.93`` or
``NORMAL 0.12`` (the positive-class probability), ``EIO`` (cannot be read just now, a
transient ``ReadError``), ``MR`` (refused by the gate: out of scope); anything else is not
an image (``DecodeError``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from worker.answers import Answer, Failure, Prediction, Refusal
from worker.db.store import (
    AuditRecord,
    BatchSummary,
    FileStamp,
    FilingPlan,
    ResultRecord,
    ScannedRecord,
    StoredResult,
)
from worker.decode import DecodedImage
from worker.errors import DecodeError, ReadError, TransientError
from worker.names import as_text

CLASSES = ("NORMAL", "PNEUMONIA")


@dataclass(frozen=True)
class FakePreprocessing:
    version: str = "fake-1"


@dataclass
class FakeModel:
    name: str = "fake-model"
    version: str = "1"
    sha256: str = "f" * 64
    positive_class: str = "PNEUMONIA"
    vocab: tuple[str, ...] = CLASSES
    preprocessing: FakePreprocessing = field(default_factory=FakePreprocessing)
    metadata: dict[str, Any] = field(default_factory=lambda: {"threshold": 0.5})


def film(label: str, probability: float, marker: str = "") -> bytes:
    """The bytes of a made-up film the fake model judges as ``label``."""
    return f"{label} {probability}\n{marker}".encode()


class FakePredictor:
    """``predict(paths)`` yields one answer per path, in order, like ``Predictor``."""

    def __init__(self, model: FakeModel | None = None, *, batch_size: int = 4):
        self.model = model or FakeModel()
        self.threshold = float(self.model.metadata["threshold"])
        self.device_name = "fake"
        self.workers = 2
        self.batch_size = batch_size
        self.seen: list[Path] = []  # every path the model was asked about

    def warm_up(self) -> None:
        pass

    def predict(self, paths: Iterable[Path | str]) -> Iterator[Answer]:
        for raw in paths:
            path = Path(raw)
            self.seen.append(path)
            yield self._answer(path)

    def _answer(self, path: Path) -> Answer:
        try:
            first = path.read_bytes().split(b"\n", 1)[0].decode("ascii", "replace").split()
        except OSError as exc:
            return Failure(path, ReadError(f"cannot read file: {exc.strerror or exc}"))
        if first == ["EIO"]:
            return Failure(path, ReadError("cannot read file: Input/output error"))
        decoded = DecodedImage(np.zeros((1, 1), np.uint8), "png", 64, 64, None)
        if first == ["MR"]:
            return Refusal(path, "Modality MR is not screened", decoded)
        if len(first) != 2 or first[0] not in CLASSES:
            return Failure(path, DecodeError("not an image: the file is text"))
        p = float(first[1])
        label = self.model.positive_class if p >= self.threshold else "NORMAL"
        return Prediction(
            path, label, {"NORMAL": 1 - p, "PNEUMONIA": p}, p, decoded, decode_ms=0.0, infer_ms=0.1
        )


class MemoryStore:
    """The results database's interface, in memory, with the same idempotence as ``Store``:
    one result per (content, model), one audit row per event id, one index row per path.

    ``down`` makes every call raise ``TransientError`` (an outage); ``refuse(sha)`` makes a
    batch holding that content's result fail as a database would refuse a row.
    """

    def __init__(self) -> None:
        self.results: dict[tuple[str, str], ResultRecord] = {}
        self.audits: dict[uuid.UUID, AuditRecord] = {}
        self.scanned: dict[tuple[str, str], ScannedRecord] = {}
        self.outbox: dict[tuple[str, str], Any] = {}  # (SOP Instance UID, destination) -> OutboxItem
        self.down = False
        self.refused: set[str] = set()
        self.commits = 0

    def _up(self) -> None:
        if self.down:
            raise TransientError("database unavailable: connection refused")

    def require_head(self) -> None:
        self._up()

    def close(self) -> None:
        pass

    def record_batch(
        self,
        results: Iterable[ResultRecord],
        audits: Iterable[AuditRecord],
        scanned: Iterable[ScannedRecord] = (),
        *,
        outbox: Iterable[Any] = (),
        before_commit: Any = None,
    ) -> BatchSummary:
        self._up()
        results, audits, scanned = list(results), list(audits), list(scanned)
        if any(r.content_sha256 in self.refused for r in results):
            raise ValueError("value too long for type character varying")  # not transient
        new_results = [r for r in results if (r.model_sha256, r.content_sha256) not in self.results]
        new_audits = [a for a in audits if a.event_id not in self.audits]
        if before_commit is not None:
            before_commit()
        for r in new_results:
            self.results[(r.model_sha256, r.content_sha256)] = r
        for a in new_audits:
            self.audits[a.event_id] = a
        for s in scanned:
            self.scanned[(s.path, s.model_sha256)] = s
        for o in outbox:  # an object already queued for a destination is left as it is
            self.outbox.setdefault((o.sop_instance_uid, o.destination), o)
        self.commits += 1
        return BatchSummary(len(new_results), len(results) - len(new_results), len(new_audits))

    def known_results(self, content_sha256s: Iterable[str], model_sha256: str) -> dict[str, StoredResult]:
        self._up()
        found = {}
        for sha in set(content_sha256s):
            r = self.results.get((model_sha256, sha))
            if r is not None:
                found[sha] = StoredResult(
                    0, sha, r.label, r.positive, r.positive_probability, r.probabilities, r.finished_at
                )
        return found

    def reported_by_other_models(self, content_sha256s: Iterable[str], model_sha256: str) -> dict[str, str]:
        self._up()
        wanted, found = set(content_sha256s), {}
        reported = {o.result_key for o in self.outbox.values() if o.kind == "sr" and o.result_key}
        for model, sha in sorted(reported, key=lambda k: self.results[k].finished_at):
            if sha in wanted and model != model_sha256:
                found[sha] = model
        return found

    def scan_index(self, paths: Iterable[str], model_sha256: str) -> dict[str, FileStamp]:
        self._up()
        return {p: FileStamp(s.size, s.mtime_ns) for p in paths if (s := self.scanned.get((p, model_sha256)))}

    def plans_of(self, event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, FilingPlan]:
        self._up()
        return {
            e: FilingPlan(a.destination_path, a.outcome, a.reason, a.content_sha256)
            for e in event_ids
            if (a := self.audits.get(e)) is not None and a.destination_path is not None
        }

    def set_destination(self, event_id: uuid.UUID, destination_path: str) -> None:
        self._up()
        self.audits[event_id] = replace(self.audits[event_id], destination_path=destination_path)

    def refile(self, event_id: uuid.UUID, *, reason: str, destination_path: str) -> None:
        self._up()
        self.audits[event_id] = replace(
            self.audits[event_id], outcome="failed", reason=reason, destination_path=destination_path
        )

    # -- what tests read back ---------------------------------------------------------

    def outcomes(self) -> dict[str, str]:
        """Audit outcomes by file name (as stored: text with ``\\xNN`` escapes)."""
        return {as_text(Path(a.source_path).name): a.outcome for a in self.audits.values()}
