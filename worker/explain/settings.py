"""``[explain]``: which films get a heatmap (``worker.config.ExplainSettings``, read by the
settings loader like every section), and where a content's heatmap is written."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from worker.config import HEATMAPS_FOR, ExplainSettings, HeatmapsFor

__all__ = ["HEATMAPS_FOR", "ExplainSettings", "HeatmapsFor", "heatmap_path"]


def heatmap_path(root: Path, sha256: str, day: date) -> Path:
    """Where the heatmap of a content goes: ``<root>/<YYYY-MM-DD>/<sha256>.png``."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a lower-case SHA-256: {sha256!r}")
    return root / day.isoformat() / f"{sha256}.png"
