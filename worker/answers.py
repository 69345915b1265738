"""What the model's side of the pipeline says of one file: a ``Prediction``, a ``Refusal`` (the
gate's: out of scope) or a ``Failure`` (the decoder's, or the file could not be read).

A leaf: the predictor makes these, and the pipeline (``Item.decide``), the sinks and the front
ends tell them apart by type, without importing the model. ``worker.outcome.Outcome`` is what
an answer becomes once the pipeline has decided the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from worker.errors import XrayScreenError

if TYPE_CHECKING:  # a type only: the pipeline imports this module and never the decoder
    from worker.decode import DecodedImage


@dataclass(frozen=True)
class Prediction:
    """The model's verdict on one film."""

    path: Path
    label: str
    probabilities: dict[str, float]
    positive_probability: float
    decoded: DecodedImage = field(repr=False)
    decode_ms: float
    infer_ms: float  # the batch's model time divided by its size
    gate_score: float | None = None  # the image gate's score (None: the model has no image gate)


@dataclass(frozen=True)
class Refusal:
    """The gate's answer: a file the model may not judge (``worker/pipeline/gate.py``)."""

    path: Path
    out_of_scope: str  # why
    decoded: DecodedImage = field(repr=False)
    gate_score: float | None = None

    @property
    def reason(self) -> str:
        return self.out_of_scope


@dataclass(frozen=True)
class Failure:
    """A file that could not be screened: ``error`` says why, and whether to try it again
    (a ``TransientError``)."""

    path: Path
    error: XrayScreenError

    @property
    def reason(self) -> str:
        return str(self.error)


Answer = Prediction | Refusal | Failure  # what the predictor says of one file
