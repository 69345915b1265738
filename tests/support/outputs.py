"""What a daemon left on disk, as the tests and bench/chaos.py check it (no pytest here, so the
benchmarks import it too)."""

from __future__ import annotations

from pathlib import Path


def filed(processed: Path, failed: Path) -> list[Path]:
    """Every file under processed/ and failed/, their ``.error.json`` sidecars left out."""
    return [
        p
        for base in (processed, failed)
        if base.exists()
        for p in base.rglob("*")
        if p.is_file() and not p.name.endswith(".error.json")
    ]
