"""Patient-aware validation split.

Kermany file names carry the patient: ``person1000_bacteria_2931.jpeg`` is patient 1000,
``IM-0115-0001.jpeg`` and ``NORMAL2-IM-0115-0001.jpeg`` are patient 0115. An image-level
split puts one patient's films on both sides and flatters the validation figures.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path

_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),
    re.compile(r"^(?:NORMAL2-)?(IM-\d+)-", re.IGNORECASE),
)


def patient_id(path: Path | str) -> str:
    """The patient a file belongs to; a file with no recognisable patient is its own."""
    name = Path(path).name
    for pattern in _PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1).lower()
    return f"file:{name}"


def split_groups(groups: Sequence[str], valid_pct: float, seed: int) -> tuple[list[int], list[int]]:
    """Indexes (train, valid) with every group (patient) on one side only: ``valid_pct`` of the
    groups, drawn with ``seed``, are the validation side."""
    patients = sorted(set(groups))
    random.Random(seed).shuffle(patients)
    valid = set(patients[: round(len(patients) * valid_pct)])
    train_idx = [i for i, g in enumerate(groups) if g not in valid]
    valid_idx = [i for i, g in enumerate(groups) if g in valid]
    return train_idx, valid_idx


class PatientSplitter:
    """Split items so that every patient's images land on one side only."""

    def __init__(self, valid_pct: float = 0.2, seed: int = 42):
        self.valid_pct, self.seed = valid_pct, seed

    def __call__(self, items: Sequence[Path]) -> tuple[list[int], list[int]]:
        return split_groups([patient_id(p) for p in items], self.valid_pct, self.seed)
