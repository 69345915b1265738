"""The ONNX Runtime engine: a bundle's network, with no torch, fastai or pickle.

Items are the numpy arrays ``BundleModel.to_item`` makes; the batch is scaled and
normalised in numpy (``worker/model/preprocess.py``) and run by ONNX Runtime, which returns
the logits and the gate's features in one call. With ``device = auto`` or ``cuda`` and
onnxruntime-gpu installed, the CUDA execution provider runs it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from worker.config import InferenceSettings
from worker.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def providers_for(device: str, available: list[str]) -> list[str]:
    """The execution providers for ``[inference] device``, best first."""
    if device == "cuda" and CUDA not in available:
        raise ConfigError(
            "[inference] device = cuda, but ONNX Runtime has no CUDA provider here "
            "(install onnxruntime-gpu in place of onnxruntime, or use device = auto or cpu)"
        )
    if device in ("auto", "cuda") and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


class OnnxEngine:
    """Item arrays -> (logits, features by layer): a bundle's ``model.onnx`` on ONNX Runtime."""

    runtime = "onnx"

    def __init__(self, model: Any, settings: InferenceSettings, layers: tuple[str, ...] = ()):
        import onnxruntime as ort

        self.model = model
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads or os.cpu_count() or 1
        # The decode threads share the cores: idle ONNX Runtime threads must not spin on them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = providers_for(settings.device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(model.network), options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise ModelError(f"cannot load {model.network}: {type(exc).__name__}: {exc}") from exc
        self.device = "cuda" if self.session.get_providers()[0] == CUDA else "cpu"
        missing = [layer for layer in layers if layer not in model.feature_outputs]
        if missing:
            raise ModelError(
                f"{model.path} has no output for gate layer(s) {', '.join(missing)}: "
                "export the bundle again from a learner with that gate"
            )
        self._input = model.manifest["graph"]["input"]
        self._layers = tuple(layers)
        names = [model.manifest["graph"]["logits"], *(model.feature_outputs[layer] for layer in layers)]
        self._outputs = names

    @property
    def device_name(self) -> str:
        if self.device == "cuda":
            return "cuda:onnxruntime"
        return "cpu"

    def run(self, items: list[np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
        x = self.model.to_batch(items)
        logits, *features = self.session.run(self._outputs, {self._input: x})
        return np.asarray(logits, dtype=np.float32), dict(zip(self._layers, features, strict=True))

    def activation(self, logits: np.ndarray) -> np.ndarray:
        """Softmax in float64: P near 0 or 1 keeps its margin."""
        z = np.asarray(logits, dtype=np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
