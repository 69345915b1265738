"""The two stages of a Ray scan, run in Ray actors: ``Prepare`` on CPUs, ``Screen`` on GPUs.

They call the runner's own stages, where Ray puts them: ``Prepare`` hashes each file
(``Item.hash``), asks the database whether this model already screened that content (then
the file is not decoded at all: ``known``), and decodes and gates the rest
(``worker.model.stages.decode_and_gate``: the shared decoder, the model's item
transforms, the gate's header checks). ``Screen`` runs batches through a ``Predictor``'s
``judge`` and ``classify``: the same engine, image gate, calibration and labelling as
``xray-worker scan`` on one machine. A row's ``outcome`` is an ``Outcome`` value once a
stage decides it (failed, out of scope), empty while the model is still to judge it.
Every actor loads the model itself and refuses it unless its SHA-256 is the one the driver
loaded, so a node with another file cannot screen.

Rows travel as plain columns (strings, numbers, one uint8 tensor); ``facts`` and
``probabilities`` are JSON, decoded again on the driver by ``worker.scan.ray.driver``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.answers import Failure, Refusal
from worker.config import GateSettings, InferenceSettings
from worker.decode import DecodedImage, Limits
from worker.errors import TransientError
from worker.outcome import Outcome
from worker.scan.run import scan_item
from worker.sources.walk import FoundFile

log = logging.getLogger(__name__)
# fastai's import touches torch.jit.script, deprecated in recent torch: not the operator's
# concern (worker.cli filters it the same way); actors import fastai after this module.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

Batch = dict[str, np.ndarray]
UNDECIDED = ""  # a row's outcome until a stage decides it (the model's verdict is the driver's)
FAILED, OUT_OF_SCOPE = Outcome.FAILED.value, Outcome.OUT_OF_SCOPE.value


@dataclass(frozen=True)
class StageSpec:
    """What an actor needs to build its half of the pipeline (small, and pickled to every node)."""

    model_path: str
    model_sha256: str  # the file the driver loaded: actors load only that
    positive_class: str
    inference: InferenceSettings
    limits: Limits
    database_url: str  # Prepare asks it which contents are already screened
    gate: GateSettings = field(default_factory=GateSettings)  # what the model may judge

    def load_model(self) -> Any:
        from worker.model.load import load

        return load(Path(self.model_path), sha256=self.model_sha256, positive_class=self.positive_class)

    def open_gate(self, model: Any) -> Any:
        from worker.model.gate import ImageGate
        from worker.pipeline.gate import Gate

        return Gate.from_settings(self.gate, ImageGate.of(model))


class Prepare:
    """Path -> content hash, and (unless the content is already screened) the item tensor."""

    def __init__(self, spec: StageSpec):
        from worker.db.store import Store

        self.model = spec.load_model()
        self.gate = spec.open_gate(self.model)
        self.limits = spec.limits
        self.store = Store(spec.database_url)
        self.item_shape = tuple(self.model.blank_item().shape)

    def __call__(self, batch: Batch) -> Batch:
        from worker.model.stages import Prepared, decode_and_gate

        n = len(batch["path"])
        started = np.full(n, time.time())
        items = [
            scan_item(FoundFile(Path(os.fsdecode(p)), int(s), int(m))).hash()
            for p, s, m in zip(batch["path"], batch["size"], batch["mtime_ns"], strict=True)
        ]
        outcome = np.array([i.outcome.value if i.outcome else UNDECIDED for i in items], dtype=object)
        reason = np.array([i.reason or "" for i in items], dtype=object)
        retry = np.array([i.retry for i in items], dtype=bool)
        sha = np.array([i.sha256 or "" for i in items], dtype=object)
        file_size = np.array([-1 if i.size is None else i.size for i in items], dtype=np.int64)
        known = np.isin(sha, list(self._known(sha[outcome == UNDECIDED])))  # screened before: not decoded
        tensors = np.zeros((n, *self.item_shape), dtype=np.uint8)
        facts = np.full(n, "", dtype=object)
        decode_ms = np.zeros(n)
        for i in np.flatnonzero((outcome == UNDECIDED) & ~known):
            match decode_and_gate(self.model, items[i].path, self.limits, self.gate):
                case Prepared() as prepared:
                    tensors[i] = np.asarray(prepared.item)
                    facts[i], decode_ms[i] = json.dumps(_facts(prepared.decoded)), prepared.decode_ms
                case Refusal(out_of_scope=why):  # before inference: the model never sees it
                    outcome[i], reason[i] = OUT_OF_SCOPE, why
                case Failure(error=error) as failed:
                    outcome[i], reason[i] = FAILED, failed.reason
                    retry[i] = isinstance(error, TransientError)
        return {
            **batch,
            "started_at": started,
            "sha256": sha.astype(str),
            "file_size": file_size,
            "outcome": outcome.astype(str),
            "known": known,
            "reason": reason.astype(str),
            "retry": retry,
            "item": tensors,
            "facts": facts.astype(str),
            "decode_ms": decode_ms,
        }

    def close(self) -> None:
        """Close the database connections (an actor's process exit does it too)."""
        self.store.close()

    def _known(self, shas: np.ndarray) -> set[str]:
        """Contents this model already has results for (an unreachable database: none)."""
        if not len(shas):
            return set()
        try:
            return set(self.store.known_results(set(shas), self.model.sha256))
        except TransientError as exc:
            log.warning("cannot ask the database for known contents (%s); decoding them all", exc)
            return set()


class Screen:
    """Item tensors -> labels and class probabilities, on this actor's GPU (else its CPUs)."""

    def __init__(self, spec: StageSpec):
        from worker.model.predictor import Predictor

        model = spec.load_model()
        self.tensor_type = type(model.blank_item())
        self.predictor = Predictor(model, spec.inference, spec.limits, gate=spec.open_gate(model))
        self.predictor.warm_up()
        self.device = self.predictor.device_name

    def __call__(self, batch: Batch) -> Batch:
        batch = dict(batch)
        items = batch.pop("item")
        n = len(items)
        label = np.full(n, "", dtype=object)
        probabilities = np.full(n, "", dtype=object)
        positive = np.full(n, np.nan)
        gate_score = np.full(n, np.nan)
        infer_ms = np.zeros(n)
        outcome, reason = batch["outcome"].astype(object), batch["reason"].astype(object)
        ready = np.flatnonzero((outcome == UNDECIDED) & ~batch["known"])
        if len(ready):
            start = time.perf_counter()
            if self.tensor_type is np.ndarray:  # a bundle's items are arrays already
                tensors = [items[i].copy() for i in ready]
            else:
                import torch

                tensors = [self.tensor_type(torch.from_numpy(items[i].copy())) for i in ready]
            probs, scores, refusals = self.predictor.judge(tensors)
            infer_ms[ready] = (time.perf_counter() - start) * 1000 / len(ready)
            for i, row, score, refused in zip(ready, probs, scores, refusals, strict=True):
                if score is not None:
                    gate_score[i] = score
                if refused:
                    outcome[i], reason[i] = OUT_OF_SCOPE, refused
                    continue
                label[i], by_class, positive[i] = self.predictor.classify(row)
                probabilities[i] = json.dumps(by_class)
        return {
            **batch,
            "outcome": outcome.astype(str),
            "reason": reason.astype(str),
            "gate_score": gate_score,
            "finished_at": np.full(n, time.time()),
            "label": label.astype(str),
            "probabilities": probabilities.astype(str),
            "positive_probability": positive,
            "infer_ms": infer_ms,
            "device": np.full(n, self.device),
        }


def decoded_from_facts(text: str) -> DecodedImage:
    """The driver's view of a decoded image: its facts; the pixels stayed on the worker."""
    from worker.decode import DicomFacts

    facts = json.loads(text)
    dicom = DicomFacts(**facts["dicom"]) if facts["dicom"] else None
    return DecodedImage(np.zeros((0, 0), np.uint8), facts["format"], facts["width"], facts["height"], dicom)


def _facts(decoded: DecodedImage) -> dict[str, Any]:
    dicom = asdict(decoded.dicom) if decoded.dicom else None
    return {"format": decoded.format, "width": decoded.width, "height": decoded.height, "dicom": dicom}
