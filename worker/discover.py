"""Turning the paths a user names into the files to screen."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def expand_paths(paths: Iterable[Path]) -> Iterator[Path]:
    """Files as named; folders walked recursively in name order, hidden entries skipped.

    Symbolic links inside folders are not followed. Whether a file is an image is
    decided later, by its content.
    """
    for path in paths:
        if path.is_dir():
            yield from _walk(path)
        else:
            yield path


def _walk(root: Path) -> Iterator[Path]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            yield Path(entry.path)
