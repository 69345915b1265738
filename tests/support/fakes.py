"""In-memory stand-ins for the heavy parts, implementing the same protocols as the real ones
(``worker/pipeline/ports.py``): ``FakePredictor`` (a ``Screening``: no torch, no trained
model) and ``MemoryStore`` (a ``Store``: no database; it lives in the product,
``worker/db/memory.py``, and is imported here for the tests that have always found it
here). The unit tier runs the real daemon, scan and pipeline stages on them, in
milliseconds.

The fake model reads its verdict from the file's first line: ``PNEUMONIA 0.93`` or
``NORMAL 0.12`` (the positive-class probability), ``EIO`` (cannot be read just now, a
transient ``ReadError``), ``MR`` (refused by the gate: out of scope); anything else is not
an image (``DecodeError``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.answers import Answer, Failure, Prediction, Refusal
from worker.db.memory import MemoryStore
from worker.decode import DecodedImage
from worker.errors import DecodeError, ReadError

__all__ = ["CLASSES", "FakeModel", "FakePredictor", "MemoryStore", "film"]

CLASSES = ("NORMAL", "PNEUMONIA")


@dataclass(frozen=True)
class FakePreprocessing:
    version: str = "fake-1"
    min_side: int | None = None


@dataclass
class FakeModel:
    name: str = "fake-model"
    version: str = "1"
    sha256: str = "f" * 64
    positive_class: str = "PNEUMONIA"
    vocab: tuple[str, ...] = CLASSES
    preprocessing: FakePreprocessing = field(default_factory=FakePreprocessing)
    metadata: dict[str, Any] = field(default_factory=lambda: {"threshold": 0.5})
    path: Path = Path("fake-model")

    @property
    def positive_index(self) -> int:
        return list(self.vocab).index(self.positive_class)

    def blank_item(self) -> np.ndarray:
        return np.zeros((1, 1), np.uint8)

    def to_item(self, decoded: DecodedImage) -> np.ndarray:
        return self.blank_item()


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


@dataclass
class CallbackSink:
    """A ``ports.Sink`` that hands each committed batch to ``then`` (a test's probe)."""

    then: Any

    def committed(self, items: Any) -> None:
        self.then(items)
