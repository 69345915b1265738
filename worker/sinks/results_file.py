"""``scan --output``: what one run screened, as CSV or JSON Lines, for people without SQL.

One line per file read in the run (screened, duplicate or failed), written after its batch
is committed and flushed at once, so the file never names a result the database lacks.
A path that is not valid UTF-8 is written as text with ``\\xNN`` for each undecodable
byte, and its exact bytes in hex in ``path_hex`` (empty, or absent in JSON, otherwise).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from worker.errors import ConfigError
from worker.names import as_fields, as_hex, as_text
from worker.pipeline.item import Item

FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


def output_format(path: Path) -> str:
    """``csv`` or ``jsonl``, from the file's extension (``ConfigError`` for anything else)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"--output {path}: the name must end in .csv or .jsonl")
    return fmt


class ResultsFile:
    """Writes verdicts to ``path`` (replacing it), in the format its extension names."""

    def __init__(self, path: Path, classes: Sequence[str]):
        self.format = output_format(path)
        self.classes = list(classes)
        self._fh: TextIO = path.open("w", encoding="utf-8", newline="")
        self._csv: Any = None
        if self.format == "csv":
            self._csv = csv.writer(self._fh)
            self._csv.writerow(
                [
                    "path",
                    "outcome",
                    "label",
                    "positive_probability",
                    *(f"probability_{c}" for c in self.classes),
                    "reason",
                    "content_sha256",
                    "path_hex",
                ]
            )
        self._fh.flush()

    def committed(self, items: Iterable[Item]) -> None:
        """(``ports.Sink``) One line per committed item: its path, outcome, label, probabilities, reason."""
        for v in items:
            if self._csv is not None:
                probs = v.probabilities or {}
                self._csv.writerow(
                    [
                        as_text(v.name),
                        v.outcome,
                        v.label or "",
                        _number(v.positive_probability),
                        *(_number(probs.get(c)) for c in self.classes),
                        v.reason or "",
                        v.sha256 or "",
                        as_hex(v.name) or "",
                    ]
                )
            else:
                self._fh.write(json.dumps(_record(v)) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _record(item: Item) -> dict[str, Any]:
    return {
        **as_fields("path", item.name),
        "outcome": item.outcome,
        "label": item.label,
        "positive_probability": item.positive_probability,
        "probabilities": item.probabilities,
        "reason": item.reason,
        "content_sha256": item.sha256,
    }


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"
