"""Batched inference: decode in a thread pool while the model runs, keep input order.

The stages (``worker/model/stages.py``): decode, preprocess and the gate's header checks in
worker threads (``decode_and_gate``), then the batch through the engine on the chosen device
(``ports.Engine``: logits and the gate's features in one pass), then the calibration, the
image gate and the threshold.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.answers import Answer, Prediction, Refusal
from worker.config import InferenceSettings
from worker.decode import DEFAULT_LIMITS, DecodedImage, Limits
from worker.errors import ConfigError
from worker.model.bundle import BundleModel
from worker.model.calibration import Calibration
from worker.model.stages import Prepared, decode_and_gate

if TYPE_CHECKING:
    from worker.pipeline.ports import Engine

log = logging.getLogger(__name__)


class Predictor:
    """Screens files in batches with a loaded model, on the runtime that fits it.

    ``predict(paths)`` yields one ``Prediction``, ``Refusal`` or ``Failure`` per path, in
    input order. Decoding of the next batch overlaps the model's work on the current one.
    The network runs in an engine: torch for an exported learner (``torch_engine.py``), ONNX
    Runtime for a bundle (``onnx_engine.py``); the rest (batches, the gate, the calibration,
    the threshold) is the same numpy for both.
    """

    def __init__(
        self,
        model: Any,
        settings: InferenceSettings | None = None,
        limits: Limits = DEFAULT_LIMITS,
        gate: Any = None,
        feature_layers: tuple[str, ...] = (),
        calibrate: bool = True,
    ):
        settings = settings or InferenceSettings()
        self.model = model
        self.gate = gate  # ``worker.pipeline.gate.Gate`` (before, image_scores, after), or None
        self.limits = limits
        self.batch_size = settings.batch_size
        self.workers = settings.decode_workers or os.cpu_count() or 1
        self.threshold = float(model.metadata.get("threshold", 0.0) or 0.0)
        # A site's calibration (worker/model/calibration.py) replaces the softmax's scale;
        # ``calibrate=False`` gives the model's own output (site-check fits on it).
        self.calibration = Calibration.of(model) if calibrate else None
        # The image gate's layers are caught in the same pass (worker/model/gate.py).
        image = getattr(gate, "image", None)
        self.engine = open_engine(model, settings, feature_layers or (image.layer_names if image else ()))

    @property
    def device(self) -> Any:
        return self.engine.device

    @property
    def device_name(self) -> str:
        return str(self.engine.device_name)

    @property
    def runtime(self) -> str:
        return str(self.engine.runtime)

    def warm_up(self) -> None:
        """One full-size batch through the model, so the first real file is not slow."""
        self.infer([self.model.blank_item()] * min(self.batch_size, 8))

    def predict(self, paths: Iterable[Path | str]) -> Iterator[Answer]:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            yield from self._pipeline(pool, (Path(p) for p in paths))

    def _pipeline(self, pool: ThreadPoolExecutor, paths: Iterator[Path]) -> Iterator[Answer]:
        lookahead = 2 * self.batch_size
        pending: deque[tuple[Path, Future[Prepared | Answer]]] = deque()

        def refill() -> None:
            while len(pending) < lookahead:
                path = next(paths, None)
                if path is None:
                    return
                pending.append((path, pool.submit(decode_and_gate, self.model, path, self.limits, self.gate)))

        refill()
        while pending:
            batch: list[tuple[Path, Prepared | Answer]] = []
            ready = 0
            while pending and ready < self.batch_size:
                path, future = pending.popleft()
                refill()
                batch.append((path, future.result()))
                ready += isinstance(batch[-1][1], Prepared)
            yield from self._run(batch)

    def _run(self, batch: list[tuple[Path, Prepared | Answer]]) -> Iterator[Answer]:
        """One batch: decoder failures and files the gate refused before inference as they
        are, the rest through the model (whose features the gate scores)."""
        answers: list[Answer | None] = []
        good: list[tuple[int, Path, Prepared]] = []
        for path, value in batch:
            if isinstance(value, Prepared):
                good.append((len(answers), path, value))
                answers.append(None)
            else:
                answers.append(value)
        if good:
            start = time.perf_counter()
            probs, scores, refusals = self.judge([value.item for _, _, value in good])
            infer_ms = (time.perf_counter() - start) * 1000 / len(good)
            for n, (i, path, (_, decoded, decode_ms)) in enumerate(good):
                score, refused = scores[n], refusals[n]
                answers[i] = (
                    Refusal(path, refused, decoded, score)
                    if refused
                    else self._prediction(path, probs[n], decoded, decode_ms, infer_ms, score)
                )
        yield from answers  # type: ignore[misc]

    def judge(self, items: list[Any]) -> tuple[np.ndarray, list[float | None], list[str | None]]:
        """Item tensors -> class probabilities, and for each image the gate's score and why it
        is refused (None: it is not): the model and the image gate in one pass."""
        probs, features, _ = self.infer_features(items)
        found = self.gate.image_scores(features) if self.gate is not None else None
        scores = [float(x) for x in found] if found is not None else [None] * len(items)
        refusals = [self.gate.after(x) if self.gate is not None else None for x in scores]
        return probs, scores, refusals

    def infer(self, items: list[Any]) -> np.ndarray:
        """Items (uint8, C x H x W, all one size: tensors for a learner, arrays for a bundle) -> class
        probabilities (N x classes)."""
        return self.infer_features(items)[0]

    def infer_features(self, items: list[Any]) -> tuple[np.ndarray, dict[str, np.ndarray] | None, np.ndarray]:
        """Items -> (class probabilities, features by layer or None, logits), in one pass
        through the network."""
        logits, features = self.engine.run(items)
        if self.calibration is not None:  # the site's calibration replaces the model's activation
            return self.calibration.probabilities(logits, self.model.positive_index), features, logits
        return self.engine.activation(logits), features, logits  # float64: P near 0 or 1 keeps its margin

    def classify(self, probs: np.ndarray) -> tuple[str, dict[str, float], float]:
        """One image's class probabilities -> its label (by the model's stored threshold, else
        the most probable class), the probabilities by class, and the positive probability."""
        vocab = self.model.vocab
        positive = float(probs[self.model.positive_index])
        if self.threshold and len(vocab) == 2:
            index = self.model.positive_index if positive >= self.threshold else 1 - self.model.positive_index
        else:
            index = int(np.argmax(probs))
        return vocab[index], {name: float(p) for name, p in zip(vocab, probs, strict=True)}, positive

    def _prediction(
        self,
        path: Path,
        probs: np.ndarray,
        decoded: DecodedImage,
        decode_ms: float,
        infer_ms: float,
        gate_score: float | None = None,
    ) -> Prediction:
        label, probabilities, positive = self.classify(probs)
        return Prediction(
            path=path,
            label=label,
            probabilities=probabilities,
            positive_probability=positive,
            decoded=decoded,
            decode_ms=decode_ms,
            infer_ms=infer_ms,
            gate_score=gate_score,
        )


def open_engine(model: Any, settings: InferenceSettings, layers: tuple[str, ...] = ()) -> Engine:
    """The engine for ``[inference] runtime``: "auto" takes the one that fits the model."""
    runtime = settings.runtime
    is_bundle = isinstance(model, BundleModel)
    if runtime == "auto":
        runtime = "onnx" if is_bundle else "torch"
    if runtime == "onnx":
        if not is_bundle:
            raise ConfigError(
                f"[inference] runtime = onnx needs a model bundle, and {model.path} is an exported learner: "
                f"make one with: xray-train export {model.path} --out DIR, and set [model] path to DIR"
            )
        from worker.model.onnx_engine import OnnxEngine

        return OnnxEngine(model, settings, layers)
    if is_bundle:
        raise ConfigError(
            f"[inference] runtime = torch needs an exported learner (export.pkl), and {model.path} is an "
            "ONNX bundle: set runtime = onnx (or auto), or [model] path to the learner it was exported from"
        )
    from worker.model.torch_engine import TorchEngine

    return TorchEngine(model, settings, layers)
