"""``predict``'s sink: one line per file on stdout (plain or JSON), errors and the summary on
stderr. Names are escaped for a terminal (``worker.names``); JSON keeps them lossless."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from worker.answers import Answer, Failure, Refusal
from worker.names import as_fields, for_log


class Console:
    """Writes each answer of a ``Predictor`` as it comes, and counts them."""

    def __init__(self, predictor: Any, out: TextIO, err: TextIO, *, as_json: bool = False):
        self.predictor, self.out, self.err, self.as_json = predictor, out, err, as_json
        self.counts: Counter[str] = Counter()  # by label, and "failed"
        self.started = time.perf_counter()

    def header(self) -> None:
        model, threshold = self.predictor.model, self.predictor.threshold
        rule = (
            f"{model.positive_class} when P({model.positive_class}) >= {threshold:.4f}"
            if threshold
            else "the most probable class"
        )
        self._line(self.err, f"model {model.name} {model.version} (SHA-256 {model.sha256[:12]}...): {rule}")

    def write(self, answer: Answer, heatmap: Path | None = None) -> None:
        """One ``Prediction`` (a line on stdout, with its heatmap's path if it has one),
        ``Refusal`` (an OUT_OF_SCOPE line on stdout) or ``Failure`` (an ERROR line on stderr)."""
        if isinstance(answer, Failure):
            self.counts["failed"] += 1
            if self.as_json:
                record = {**as_fields("path", str(answer.path)), "error": answer.reason}
                self._line(self.out, json.dumps(record))
            else:
                self._line(self.err, f"{for_log(str(answer.path))}  ERROR  {answer.reason}")
            return
        if isinstance(answer, Refusal):
            refused = answer.out_of_scope
            self.counts["OUT_OF_SCOPE"] += 1
            if self.as_json:
                record = {**as_fields("path", str(answer.path)), "outcome": "out_of_scope", "reason": refused}
                self._line(self.out, json.dumps(record))
            else:
                self._line(self.out, f"{for_log(str(answer.path))}  OUT_OF_SCOPE  {refused}")
            return
        self.counts[answer.label] += 1
        if self.as_json:
            record = self._record(answer)
            if heatmap is not None:
                record.update(as_fields("heatmap", str(heatmap)))
            self._line(self.out, json.dumps(record))
        else:
            probs = " ".join(f"{name}={p:.4f}" for name, p in answer.probabilities.items())
            shown = f"  heatmap={for_log(str(heatmap))}" if heatmap is not None else ""
            self._line(self.out, f"{for_log(str(answer.path))}  {answer.label}  {probs}{shown}")

    def summary(self, skipped: Counter[str]) -> int:
        """The closing line (and what was skipped); the number of files screened or failed."""
        seconds = time.perf_counter() - self.started
        total = sum(self.counts.values())
        labels = ", ".join(f"{n} {label}" for label, n in sorted(self.counts.items()))
        rate = f" ({total / seconds:.1f} images/s)" if seconds > 0 and total else ""
        where = self.predictor.device_name
        self._line(self.err, f"{total} files in {seconds:.1f} s{rate} on {where}: {labels or 'none'}")
        if skipped and total:
            self._line(self.err, "skipped: " + describe(skipped))
        return total

    def _record(self, answer: Any) -> dict[str, Any]:
        decoded, model = answer.decoded, self.predictor.model
        record: dict[str, Any] = {
            **as_fields("path", str(answer.path)),
            "outcome": "screened",
            "label": answer.label,
            "probabilities": answer.probabilities,
            "positive_class": model.positive_class,
            "positive_probability": answer.positive_probability,
            "format": decoded.format,
            "width": decoded.width,
            "height": decoded.height,
            "model_sha256": model.sha256,
            "preprocessing": model.preprocessing.version,
        }
        if answer.gate_score is not None:
            record["gate_score"] = answer.gate_score
        if decoded.dicom is not None:
            record["sop_instance_uid"] = decoded.dicom.sop_instance_uid
            record["modality"] = decoded.dicom.modality
        return record

    @staticmethod
    def _line(stream: TextIO, text: str) -> None:
        stream.write(text + "\n")
        stream.flush()


def describe(skipped: Counter[str]) -> str:
    """``3 hidden entries, 419 symbolic links (never followed)``."""
    return ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))
