"""The fastai side: the image type training pickles into the learner, and checked loading.

``OpenXray`` is the DataBlock's type transform: it opens every file through
``worker.decode.decode_file``, so training, ``learn.predict``, ``test_dl`` and the worker's
fast path all see identical pixels. It is pickled inside ``export.pkl``; keep its import
path stable.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastai.data.transforms import IntToFloatTensor, Normalize
from fastai.learner import Learner, load_learner
from fastai.torch_core import TensorImageBW
from fastai.vision.augment import Resize
from fastai.vision.core import PILImage, PILImageBW
from fasttransform import Pipeline, Transform
from PIL import Image

from worker.decode import DecodedImage, decode_file
from worker.errors import ModelError
from worker.model.pinned import check_pinned
from worker.model.preprocess import Preprocessing
from worker.pipeline.hashing import sha256_file


class TensorXray(TensorImageBW):
    """An X-ray as a tensor; shown white-on-black as radiologists read it."""

    _show_args = {"cmap": "gray"}  # noqa: RUF012  (fastai's class-level convention)


class XrayImage(PILImageBW):
    """A chest X-ray decoded by ``worker.decode`` (8-bit grey)."""

    _show_args = {"cmap": "gray"}  # noqa: RUF012
    _tensor_cls = TensorXray


class OpenXray(Transform):
    """Path -> XrayImage, through the shared decoder (JPEGs decoded at >= ``min_side``)."""

    def __init__(self, min_side: int | None = None):
        super().__init__()
        self.min_side = min_side

    def encodes(self, fn: Path | str) -> XrayImage:
        return XrayImage(Image.fromarray(decode_file(fn, min_side=self.min_side).pixels))


@dataclass
class LoadedModel:
    """An exported learner, checked and opened, with what the fast path needs from it."""

    learner: Learner
    path: Path
    sha256: str
    vocab: list[str]
    positive_index: int
    preprocessing: Preprocessing
    item_pipeline: Pipeline
    batch_pipeline: Pipeline
    image_class: type
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.path.parent.name or self.path.stem)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version") or self.sha256[:12])

    @property
    def positive_class(self) -> str:
        return self.vocab[self.positive_index]

    def to_item(self, decoded: DecodedImage) -> Any:
        """Decoded pixels -> the learner's item tensor (resized, uint8, C x H x W)."""
        img = Image.fromarray(decoded.pixels)
        if self.preprocessing.image_mode != "L":
            img = img.convert(self.preprocessing.image_mode)
        return self.item_pipeline(self.image_class(img))

    def blank_item(self) -> Any:
        """A black image at the model's input size, as an item tensor (warm-up, shapes, types)."""
        height, width = self.preprocessing.resize or (224, 224)
        return self.to_item(DecodedImage(np.zeros((height, width), dtype=np.uint8), "PNG", width, height))


# Where this project's classes in a learner (OpenXray, XrayImage, TensorXray) lived when
# older models were exported: a pickle names its classes by module, and models outlive moves.
MOVED_MODULES = {"worker.learner": "worker.model.learner"}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


class MovedModules:
    """``pickle``, as ``torch.load`` uses it, with the moved modules found where they are now."""

    Unpickler = _Unpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _Unpickler(file, **kwargs).load()


def file_sha256(path: Path) -> str:
    return sha256_file(path)[0]


def load_model(path: Path, *, sha256: str = "", trust: bool = False, positive_class: str = "") -> LoadedModel:
    """Load an exported learner, but only if its SHA-256 is the expected one.

    Unpickling runs code, so an unchecked file is refused unless ``trust`` is set.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"model file not found: {path}: set [model] path (XRAY_SCREEN_MODEL_PATH, --model) "
            "to an exported learner"
        )
    actual = check_pinned(path, sha256, trust=trust, what="model file", runs_code=True)
    try:
        with warnings.catch_warnings():
            # fastai warns that pickle is unsafe; the file's hash was checked above.
            warnings.filterwarnings("ignore", message=".*load_learner.*insecure pickle")
            learner = load_learner(path, cpu=True, pickle_module=MovedModules)
    except Exception as exc:  # a pickle can raise anything; say which file and why
        raise ModelError(f"cannot load model {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(learner, Learner):
        raise ModelError(f"{path} is not an exported fastai learner")
    learner.model.eval()
    return _describe(learner, path, actual, positive_class)


def _describe(learner: Learner, path: Path, sha256: str, positive_class: str) -> LoadedModel:
    dls = learner.dls
    vocab = [str(v) for v in dls.vocab]
    if positive_class:
        if positive_class not in vocab:
            raise ModelError(f"positive class {positive_class!r} is not one of the model's classes {vocab}")
        positive_index = vocab.index(positive_class)
    else:
        positive_index = len(vocab) - 1
    item_pipeline = dls.valid.after_item
    batch_pipeline = dls.valid.after_batch
    # Validation behaviour (centre crops, no augmentation), as test_dl and get_preds use.
    item_pipeline.split_idx = batch_pipeline.split_idx = 1
    type_tfms = list(dls.valid_ds.tls[0].tfms.fs) if hasattr(dls.valid_ds, "tls") else []
    opener = next((t for t in type_tfms if isinstance(t, OpenXray)), None)
    image_class: type = XrayImage if opener else PILImage
    for tfm in type_tfms:  # a learner built with ImageBlock(cls=...) opens with cls.create
        owner = getattr(getattr(tfm, "func", None), "__self__", None)
        if isinstance(owner, type) and issubclass(owner, PILImage):
            image_class = owner
    resize = next((t for t in item_pipeline.fs if isinstance(t, Resize)), None)
    norm = next((t for t in batch_pipeline.fs if isinstance(t, Normalize)), None)
    if not any(isinstance(t, IntToFloatTensor) for t in batch_pipeline.fs):
        raise ModelError(f"{path}: the learner's batch transforms have no IntToFloatTensor")
    size = (int(resize.size[1]), int(resize.size[0])) if resize else None
    min_side = opener.min_side if opener and opener.min_side else 2 * max(size or (224,))
    preprocessing = Preprocessing(
        image_mode="L" if issubclass(image_class, PILImageBW) else "RGB",
        min_side=int(min_side),
        resize=size,
        resize_method=str(resize.method) if resize else None,
        normalize=(_flat(norm.mean), _flat(norm.std)) if norm is not None and norm.mean is not None else None,
    )
    metadata = dict(getattr(learner, "xray_metadata", None) or {})
    return LoadedModel(
        learner=learner,
        path=path,
        sha256=sha256,
        vocab=vocab,
        positive_index=positive_index,
        preprocessing=preprocessing,
        item_pipeline=item_pipeline,
        batch_pipeline=batch_pipeline,
        image_class=image_class,
        metadata=metadata,
    )


def _flat(value: Any) -> list[float]:
    return [float(v) for v in np.asarray(value.cpu() if hasattr(value, "cpu") else value).reshape(-1)]
