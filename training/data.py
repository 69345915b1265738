"""Finding labelled X-rays and the DataBlock that feeds them to the learner."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, overload

from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.transforms import IntToFloatTensor, Normalize, RandomSplitter, get_files, parent_label
from fastai.torch_core import TensorImage
from fastai.vision.augment import Resize, ResizeMethod
from fasttransform import Transform

from worker.model.learner import OpenXray

XRAY_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
KAGGLE_SPLITS = ("train", "val", "test")


def get_xray_files(path: Path | str) -> list[Path]:
    """Every PNG, JPEG and DICOM file below ``path`` (by extension; content decides later)."""
    return sorted(get_files(path, extensions=XRAY_EXTENSIONS, recurse=True))


def class_root(data_dir: Path, split: str) -> Path:
    """The folder whose subfolders are the classes.

    A plain layout (``DATA/NORMAL``, ``DATA/PNEUMONIA``) is used as it is; in the Kaggle
    layout (``DATA/train/NORMAL``, ``DATA/val/...``, ``DATA/test/...``) ``split`` picks one.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    children = {p.name for p in data_dir.iterdir() if p.is_dir()}
    if children and children <= set(KAGGLE_SPLITS):
        if split not in children:
            raise FileNotFoundError(f"{data_dir} has the Kaggle layout but no {split}/ folder")
        return data_dir / split
    return data_dir


@overload
def labelled_files(
    data_dir: Path, split: str = ..., labels_csv: Path | None = ..., *, with_patients: Literal[False] = ...
) -> list[tuple[Path, str]]: ...
@overload
def labelled_files(
    data_dir: Path, split: str = ..., labels_csv: Path | None = ..., *, with_patients: Literal[True]
) -> list[tuple[Path, str, str | None]]: ...
def labelled_files(
    data_dir: Path, split: str = "test", labels_csv: Path | None = None, *, with_patients: bool = False
) -> list[tuple[Path, str]] | list[tuple[Path, str, str | None]]:
    """(file, label) pairs: labels from the parent folder, or from a ``file,label`` CSV.

    ``with_patients``: (file, label, patient) triples instead, the patient from the CSV's
    ``patient_id`` column when it has one (an empty cell is None), else None.
    """
    if labels_csv is None:
        root = class_root(data_dir, split)
        pairs = [(f, parent_label(f)) for f in get_xray_files(root)]
        return [(f, label, None) for f, label in pairs] if with_patients else pairs
    with Path(labels_csv).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise ValueError(f"{labels_csv}: needs the columns file,label")
    if with_patients:
        return [(Path(data_dir) / row["file"], row["label"], row.get("patient_id") or None) for row in rows]
    return [(Path(data_dir) / row["file"], row["label"]) for row in rows]


def xray_block(size: int) -> TransformBlock:
    """Like fastai's ImageBlock, but every file is opened by the worker's decoder."""
    return TransformBlock(type_tfms=OpenXray(min_side=2 * size), batch_tfms=IntToFloatTensor)


AUGMENT_LEVELS = ("mild", "strong")


def xray_augmentations(level: str = "mild") -> list:
    """Anatomy-preserving batch augmentation, training split only: no flips (the heart is on one side).

    ``mild`` is the shipped recipe's. ``strong`` adds larger lighting and contrast changes,
    random crops of 64-100% of the area at a random centre (fastai's ``Zoom`` up to 1.25:
    unlike ``RandomResizedCropGPU``, it does not run at validation), more rotation and warp,
    and :class:`XrayIntensity` (gamma, blur and noise). Every transform here has
    ``split_idx=0``: validation and inference never see them.
    """
    from fastai.vision.augment import aug_transforms

    if level == "mild":
        return aug_transforms(do_flip=False, max_rotate=10.0, max_zoom=1.1, max_lighting=0.2, max_warp=0.1)
    if level != "strong":
        raise ValueError(f"unknown augmentation level {level!r}; use one of {AUGMENT_LEVELS}")
    return [
        *aug_transforms(
            do_flip=False,
            max_rotate=15.0,
            max_zoom=1.25,
            max_lighting=0.4,
            max_warp=0.15,
            p_affine=0.85,
            p_lighting=0.9,
        ),
        XrayIntensity(),
    ]


class XrayIntensity(Transform):
    """Per-image gamma, light Gaussian blur and Gaussian noise on a float batch in [0, 1].

    Only on the training split (``split_idx=0``), after fastai's lighting and before
    ``Normalize``. It lives in the training package, which the worker never imports, so
    ``training.recipe.strip_training_transforms`` removes it from a learner before export.
    """

    split_idx = 0
    order = 95  # after the affine (30) and lighting (40) transforms, before Normalize (99)

    def __init__(
        self,
        max_gamma: float = 1.5,
        p_blur: float = 0.2,
        p_noise: float = 0.3,
        max_noise: float = 0.03,
    ):
        super().__init__()
        self.max_gamma, self.p_blur, self.p_noise, self.max_noise = max_gamma, p_blur, p_noise, max_noise

    def encodes(self, x: TensorImage) -> TensorImage:
        import torch
        import torch.nn.functional as F

        n = x.shape[0]
        shape = (n,) + (1,) * (x.dim() - 1)
        log_g = torch.empty(n, device=x.device).uniform_(-1.0, 1.0) * math.log(self.max_gamma)
        y = x.clamp(1e-6, 1.0) ** torch.exp(log_g).view(shape)
        if self.p_blur > 0:
            kernel = torch.tensor([0.25, 0.5, 0.25], device=x.device, dtype=x.dtype)
            kernel = (kernel[:, None] * kernel[None, :]).expand(y.shape[1], 1, 3, 3)
            blurred = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), kernel, groups=y.shape[1])
            pick = (torch.rand(n, device=x.device) < self.p_blur).view(shape)
            y = torch.where(pick, blurred, y)
        if self.p_noise > 0:
            sigma = torch.rand(n, device=x.device) * self.max_noise
            sigma = sigma * (torch.rand(n, device=x.device) < self.p_noise)
            y = y + torch.randn_like(y) * sigma.view(shape)
        return y.clamp(0.0, 1.0)


def xray_datablock(
    *,
    size: int = 128,
    method: str = ResizeMethod.Squish,
    valid_pct: float = 0.2,
    seed: int = 42,
    splitter=None,
    aug_tfms: Sequence = (),
    stats: tuple[Sequence[float], Sequence[float]] | None = None,
) -> DataBlock:
    """The seed's DataBlock: parent-folder labels, a seeded random split, Resize(size)."""
    normalize = Normalize.from_stats(*stats, cuda=False) if stats else Normalize()
    return DataBlock(
        blocks=(xray_block(size), CategoryBlock),
        get_items=get_xray_files,
        splitter=splitter or RandomSplitter(valid_pct=valid_pct, seed=seed),
        get_y=parent_label,
        item_tfms=Resize(size, method=method),
        batch_tfms=[*aug_tfms, normalize],
    )
