"""Batched inference: decode in a thread pool while the model runs, keep input order.

The stages are the learner's own: ``decode_file`` (through ``LoadedModel.decode_and_prepare``)
and the learner's item transforms in worker threads, then the learner's batch transforms
and model on the chosen device. Nothing about the preprocessing is restated here.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.config import InferenceSettings
from worker.decode import DEFAULT_LIMITS, DecodedImage, Limits
from worker.errors import ConfigError, DecodeError, XrayScreenError
from worker.model.calibration import Calibration
from worker.model.fusion import fold_batchnorm
from worker.model.gate import PENULTIMATE, FeatureTap, split_head
from worker.model.learner import LoadedModel
from worker.runtime.boundary import contain

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
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
    path: Path
    error: XrayScreenError

    @property
    def reason(self) -> str:
        return str(self.error)


Answer = Prediction | Failure | Refusal  # what the predictor says of one file


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("[inference] device = cuda, but no CUDA GPU is available (use auto or cpu)")
    return torch.device(requested)


class Predictor:
    """Screens files in batches with a loaded model.

    ``predict(paths)`` yields one ``Prediction`` or ``Failure`` per path, in input order.
    Decoding of the next batch overlaps the model's work on the current one.
    """

    def __init__(
        self,
        model: LoadedModel,
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
        self.device = resolve_device(settings.device)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.workers = settings.decode_workers or os.cpu_count() or 1
        self.threshold = float(model.metadata.get("threshold", 0.0) or 0.0)
        self.activation = getattr(model.learner.loss_func, "activation", None) or (
            lambda x: torch.softmax(x, dim=1)
        )
        # A site's calibration (worker/model/calibration.py) replaces the softmax's scale;
        # ``calibrate=False`` gives the model's own output (site-check fits on it).
        self.calibration = Calibration.of(model) if calibrate else None
        # channels_last is faster for convolutions on current CPUs and on GPUs alike.
        net, folded = fold_batchnorm(model.learner.model)
        log.debug("folded %d BatchNorm layers into the convolutions before them", folded)
        self.net = net.to(self.device, memory_format=torch.channels_last)
        # The penultimate features come with every batch for free, and the image gate's other
        # layers are caught on the way (worker/model/gate.py).
        self._split = split_head(self.net)
        image = getattr(gate, "image", None)
        self._tap = FeatureTap(self.net, feature_layers or (image.layer_names if image else ()))
        cuda = self.device.type == "cuda"
        if cuda:
            _move_parameters(model.batch_pipeline, self.device)
        self._autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cuda else nullcontext

    def warm_up(self) -> None:
        """One full-size batch through the model, so the first real file is not slow."""
        self.infer([self.model.blank_item()] * min(self.batch_size, 8))

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.device)}"
        return "cpu"

    def predict(self, paths: Iterable[Path | str]) -> Iterator[Answer]:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            yield from self._pipeline(pool, (Path(p) for p in paths))

    def _pipeline(self, pool: ThreadPoolExecutor, paths: Iterator[Path]) -> Iterator[Answer]:
        lookahead = 2 * self.batch_size
        pending: deque[tuple[Path, Future[tuple[Any, DecodedImage, float]]]] = deque()

        def refill() -> None:
            while len(pending) < lookahead:
                path = next(paths, None)
                if path is None:
                    return
                pending.append((path, pool.submit(self._prepare, path)))

        refill()
        while pending:
            batch: list[tuple[Path, Any]] = []
            ready = 0
            while pending and ready < self.batch_size:
                path, future = pending.popleft()
                refill()
                try:
                    batch.append((path, future.result()))
                    ready += 1
                except XrayScreenError as exc:
                    batch.append((path, exc))
            yield from self._run(batch)

    def _prepare(self, path: Path) -> tuple[Any, DecodedImage, float]:
        return prepare(self.model, path, self.limits)

    def _run(self, batch: list[tuple[Path, Any]]) -> Iterator[Answer]:
        """One batch: decoder failures, files the gate refuses before inference, and the rest
        through the model (whose features the gate scores)."""
        answers: list[Answer | None] = []
        good: list[tuple[int, Path, Any]] = []
        for path, value in batch:
            if isinstance(value, XrayScreenError):
                answers.append(Failure(path, value))
                continue
            refused = self.gate.before(value[1]) if self.gate is not None else None
            answers.append(Refusal(path, refused, value[1]) if refused else None)
            if not refused:
                good.append((len(answers) - 1, path, value))
        if good:
            start = time.perf_counter()
            probs, scores, refusals = self.judge([value[0] for _, _, value in good])
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
        """Item tensors (uint8, C x H x W, all one size) -> class probabilities (N x classes)."""
        return self.infer_features(items)[0]

    def infer_features(self, items: list[Any]) -> tuple[np.ndarray, dict[str, np.ndarray] | None, np.ndarray]:
        """Item tensors -> (class probabilities, features by layer or None, logits), in one
        pass through the model."""
        x = items[0].__class__(torch.stack(items))  # keep fastai's tensor type for dispatch
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        features = None
        with torch.inference_mode(), self._autocast():
            x = self.model.batch_pipeline(x).contiguous(memory_format=torch.channels_last)
            if self._split is not None:
                trunk, classifier = self._split
                feats = trunk(x)
                logits = classifier(feats).float()
                features = {PENULTIMATE: feats.float().cpu().numpy(), **self._tap.take()}
            else:
                logits = self.net(x).float()
            # The site's calibration replaces the model's own activation, which is then not run.
            out = None if self.calibration is not None else self.activation(logits.double())
        logits_np = logits.cpu().numpy()
        if out is None:
            return self.calibration.probabilities(logits_np, self.model.positive_index), features, logits_np
        return out.cpu().numpy(), features, logits_np  # float64: P near 0 or 1 keeps its margin

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


def prepare(
    model: LoadedModel, path: Path, limits: Limits = DEFAULT_LIMITS
) -> tuple[Any, DecodedImage, float]:
    """Decode one file and apply the learner's item transforms: (item tensor, decoded image, ms).

    Raises ``XrayScreenError`` only: a decoder bug (even a Rust panic) fails this file alone,
    as an internal error (``worker/runtime/boundary.py``).
    """
    start = time.perf_counter()
    try:
        item, decoded = model.decode_and_prepare(path, limits)
    except (XrayScreenError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a Rust panic is a BaseException
        raise DecodeError(contain("decoding", str(path), exc)) from exc
    return item, decoded, (time.perf_counter() - start) * 1000


def _move_parameters(pipeline: Any, device: torch.device) -> None:
    """Put transform statistics (Normalize's mean and std) on the model's device."""
    for tfm in pipeline.fs:
        for name in getattr(tfm, "parameters", ()) or ():
            value = getattr(tfm, name, None)
            if isinstance(value, torch.Tensor):
                setattr(tfm, name, value.to(device))
