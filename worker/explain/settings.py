"""``[explain]``: which films get a heatmap, and where heatmaps are written.

Not yet read by ``worker.config``'s loader; it follows its conventions (a frozen dataclass,
``minimum``/``maximum`` metadata, comments an operator reads) so that it can be wired in as
one more section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Literal

from worker.config import DEFAULT_VAR

HeatmapsFor = Literal["positives", "all", "none"]
HEATMAPS_FOR: tuple[str, ...] = ("positives", "all", "none")


@dataclass(frozen=True)
class ExplainSettings:
    # Which screened films get a heatmap: positives (the model's positive verdicts), all, none.
    heatmaps: HeatmapsFor = "positives"
    # Where heatmaps are written: <folder>/<date>/<content sha256>.png.
    folder: Path = DEFAULT_VAR / "heatmaps"
    # The overlay's long side at most (pixels); smaller films keep their size.
    max_side: int = field(default=1024, metadata={"minimum": 64, "maximum": 8192})

    def wants(self, label: str, positive_class: str) -> bool:
        """Whether a film screened with ``label`` gets a heatmap."""
        return self.heatmaps == "all" or (self.heatmaps == "positives" and label == positive_class)


def heatmap_path(root: Path, sha256: str, day: date) -> Path:
    """Where the heatmap of a content goes: ``<root>/<YYYY-MM-DD>/<sha256>.png``."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a lower-case SHA-256: {sha256!r}")
    return root / day.isoformat() / f"{sha256}.png"
