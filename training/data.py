"""Finding labelled X-rays and the DataBlock that feeds them to the learner."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.transforms import IntToFloatTensor, Normalize, RandomSplitter, get_files, parent_label
from fastai.vision.augment import Resize, ResizeMethod

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


def labelled_files(
    data_dir: Path, split: str = "test", labels_csv: Path | None = None
) -> list[tuple[Path, str]]:
    """(file, label) pairs: labels from the parent folder, or from a ``file,label`` CSV."""
    if labels_csv is None:
        root = class_root(data_dir, split)
        return [(f, parent_label(f)) for f in get_xray_files(root)]
    with Path(labels_csv).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise ValueError(f"{labels_csv}: needs the columns file,label")
    return [(Path(data_dir) / row["file"], row["label"]) for row in rows]


def xray_block(size: int) -> TransformBlock:
    """Like fastai's ImageBlock, but every file is opened by the worker's decoder."""
    return TransformBlock(type_tfms=OpenXray(min_side=2 * size), batch_tfms=IntToFloatTensor)


def xray_augmentations() -> list:
    """Mild, anatomy-preserving augmentation: no flips (the heart is on one side)."""
    from fastai.vision.augment import aug_transforms

    return aug_transforms(do_flip=False, max_rotate=10.0, max_zoom=1.1, max_lighting=0.2, max_warp=0.1)


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
