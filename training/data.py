"""Finding labelled X-rays and the DataBlock that feeds them to the learner."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.transforms import IntToFloatTensor, Normalize, RandomSplitter, get_files, parent_label
from fastai.vision.augment import Resize, ResizeMethod

from worker.learner import OpenXray

XRAY_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def get_xray_files(path: Path | str) -> list[Path]:
    """Every PNG, JPEG and DICOM file below ``path`` (by extension; content decides later)."""
    return list(get_files(path, extensions=XRAY_EXTENSIONS, recurse=True))


def xray_block(size: int) -> TransformBlock:
    """Like fastai's ImageBlock, but every file is opened by the worker's decoder."""
    return TransformBlock(type_tfms=OpenXray(min_side=2 * size), batch_tfms=IntToFloatTensor)


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
