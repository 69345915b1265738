"""The stages around the network, each with one narrow job, for the local predictor and the
Ray actors alike:

- **decode** (``decode``): a file -> a ``DecodedImage`` (8-bit grey pixels and the facts of
  its header), through the shared decoder (``worker/decode``), at the size the model's
  preprocessing asks for. Models never read files.
- **preprocess** (``preprocess``): a decoded image -> the model's input item (the learner's
  own fastai transforms, or a bundle's numpy rebuild of them: ``model.to_item``).
- **gate, before inference** (``decode_and_gate``): what the header and the size say
  (``worker/pipeline/gate.py``); a film refused here never reaches the model.

Then, in ``worker/model/predictor.py``: **infer** (items -> logits and the gate's features,
in one pass of an ``Engine``: torch, ONNX fp32 or int8, ``ports.Engine``), **calibrate**
(logits -> probabilities, ``worker/model/calibration.py``), the **image gate** (features ->
a score and a refusal) and **classify** (probabilities -> a label by the site's threshold).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

from worker.answers import Answer, Failure, Refusal
from worker.decode import DEFAULT_LIMITS, DecodedImage, Limits, decode_file
from worker.errors import DecodeError, XrayScreenError
from worker.runtime.boundary import contain


def decode(model: Any, path: Path, limits: Limits = DEFAULT_LIMITS) -> DecodedImage:
    """The file's pixels and header facts, decoded at the size ``model``'s preprocessing needs
    (a JPEG is decoded at reduced size when that is still at least ``min_side``)."""
    return decode_file(path, min_side=model.preprocessing.min_side, limits=limits)


def preprocess(model: Any, decoded: DecodedImage) -> Any:
    """A decoded image as ``model``'s input item (uint8, C x H x W)."""
    return model.to_item(decoded)


def prepare_file(model: Any, path: Path, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, DecodedImage]:
    """Decode and preprocess one file: (item, decoded image). Errors as the decoder raises them."""
    decoded = decode(model, path, limits)
    return preprocess(model, decoded), decoded


class Prepared(NamedTuple):
    """One file ready for the model: its item (a tensor or an array), the decoded image's
    facts, and the milliseconds decoding and preprocessing took."""

    item: Any
    decoded: DecodedImage
    decode_ms: float


def prepare(model: Any, path: Path, limits: Limits = DEFAULT_LIMITS) -> Prepared:
    """``prepare_file``, timed, inside the fault boundary: raises ``XrayScreenError`` only, so a
    decoder bug (even a Rust panic) fails this file alone, as an internal error
    (``worker/runtime/boundary.py``)."""
    start = time.perf_counter()
    try:
        item, decoded = prepare_file(model, path, limits)
    except (XrayScreenError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a Rust panic is a BaseException
        raise DecodeError(contain("decoding", str(path), exc)) from exc
    return Prepared(item, decoded, (time.perf_counter() - start) * 1000)


def decode_and_gate(model: Any, path: Path, limits: Limits, gate: Any) -> Prepared | Answer:
    """The stages before inference, for one file (a decode worker's job, local or a Ray
    actor's): decode and preprocess it, then the gate's checks of what the header and the
    size say. A ``Failure`` (the decoder's error) or a ``Refusal`` (the gate's) when the
    model must not see it."""
    try:
        prepared = prepare(model, path, limits)
    except XrayScreenError as exc:
        return Failure(path, exc)
    refused = gate.before(prepared.decoded) if gate is not None else None
    return Refusal(path, refused, prepared.decoded) if refused else prepared
