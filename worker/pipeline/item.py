"""One file on its way through the pipeline, whichever source it came from.

An ``Item`` is made by a source (the inbox's claim, the archive walk, the Ray planner),
hashed, settled, screened and committed by the shared stages, and handed to a sink at the
end. It carries everything those stages decide about the file, so no stage keeps a second
copy: the outcome (``worker.outcome.Outcome``) with its label or reason, the model's
prediction, and whether a failure is worth another try.

The one rule about failures lives here: a failure that is the file's own content (not an
image, corrupt pixel data) is final; one that is not (the file could not be read just now,
or our own code failed on it) sets ``retry``, and the source tries the file again later.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.answers import Answer, Failure, Prediction, Refusal
from worker.db.store import StoredResult
from worker.errors import TransientError
from worker.outcome import Outcome
from worker.pipeline.hashing import sha256_file
from worker.runtime.boundary import contain


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class Item:
    """One file in the pipeline, until its outcome is committed (and, for the inbox, filed)."""

    path: Path  # where its bytes are read from now
    name: str  # how the audit trail and the logs name it (its path in the inbox or archive)
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)  # its audit row's id
    source: Any = None  # the source's own handle on it (a ``Claimed``, a ``FoundFile``)
    queued_at: datetime | None = None  # when it was taken (the inbox); None for a scan
    started_at: datetime = field(default_factory=now)
    finished_at: datetime | None = None
    sha256: str | None = None
    size: int | None = None
    outcome: Outcome | None = None  # None until decided
    reason: str | None = None  # why it failed
    retry: bool = False  # failed for a reason other than its content: try it again later
    label: str | None = None
    positive: bool = False
    positive_probability: float | None = None
    probabilities: dict[str, float] | None = None
    prediction: Prediction | None = None  # the model's, for a screened item
    heatmap_path: Path | None = None  # its Grad-CAM overlay ([explain]), for a screened item
    destination: str | None = None  # where the inbox files it (recorded before the move)
    twins: list[Item] = field(default_factory=list)  # same content, waiting for this one's verdict

    @property
    def decided(self) -> bool:
        return self.outcome is not None

    def hash(self) -> Item:
        """Read the content hash and size; an unreadable file fails, to be tried again later."""
        try:
            self.sha256, self.size = sha256_file(self.path)
        except OSError as exc:
            self.fail(f"cannot read file: {exc.strerror or exc}", retry=True)
        except Exception as exc:  # our fault, not the file's
            self.fail(contain("hashing", self.name, exc), retry=True)
        return self

    def fail(self, reason: str, *, retry: bool = False) -> None:
        self.outcome, self.reason, self.retry = Outcome.FAILED, reason, retry
        self.label, self.prediction, self.probabilities, self.positive_probability = None, None, None, None
        self.positive, self.heatmap_path = False, None
        self.finished_at = now()

    def decide(self, answer: Answer, positive_class: str) -> None:
        """The model's ``Prediction``, the gate's ``Refusal`` (out of scope) or the decoder's
        ``Failure`` (tried again when its error is a ``TransientError``)."""
        match answer:
            case Failure(error=error):
                self.fail(answer.reason, retry=isinstance(error, TransientError))
            case Refusal(out_of_scope=reason):
                self.refuse(reason)
            case Prediction():
                self.outcome, self.label, self.prediction = Outcome.SCREENED, answer.label, answer
                self.positive = answer.label == positive_class
                self.positive_probability = answer.positive_probability
                self.probabilities = answer.probabilities
                self.finished_at = now()
            case _:
                raise TypeError(f"not an answer: {answer!r}")

    def refuse(self, reason: str) -> None:
        """The gate says the model may not judge this file."""
        self.fail(reason)
        self.outcome = Outcome.OUT_OF_SCOPE

    def copy_verdict(self, first: Item) -> None:
        """Same content as ``first``, decided in this run: its verdict, without the model."""
        if first.outcome is Outcome.FAILED:
            self.fail(first.reason or "", retry=first.retry)
            return
        if first.outcome is Outcome.OUT_OF_SCOPE:
            self.refuse(first.reason or "")
            return
        self.outcome = Outcome.DUPLICATE
        self.label, self.positive = first.label, first.positive
        self.positive_probability, self.probabilities = first.positive_probability, first.probabilities
        self.finished_at = now()

    def copy_stored(self, stored: StoredResult) -> None:
        """Same content as an earlier result of this model: that verdict."""
        self.outcome, self.label, self.positive = Outcome.DUPLICATE, stored.label, stored.positive
        self.positive_probability, self.probabilities = stored.positive_probability, stored.probabilities
        self.finished_at = now()
