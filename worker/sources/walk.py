"""Turning the paths a user names into the files to screen: ``expand_paths`` for ``predict``,
``walk_files`` (streaming, filtered) for ``scan``."""

from __future__ import annotations

import fnmatch
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


def expand_paths(paths: Iterable[Path], skipped: Counter[str] | None = None) -> Iterator[Path]:
    """Files as named; folders walked recursively in name order, hidden entries skipped.

    Symbolic links inside folders are not followed. Whether a file is an image is
    decided later, by its content. What a walk leaves out is counted in ``skipped``, by
    kind (``symbolic links``, ``hidden entries``, ``special files``, ``unreadable folders``),
    so that a command that found nothing can say why.
    """
    skipped = Counter() if skipped is None else skipped
    for path in paths:
        if path.is_dir():
            yield from _walk(path, skipped)
        else:
            yield path


def _walk(root: Path, skipped: Counter[str]) -> Iterator[Path]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        skipped["unreadable folders"] += 1
        return
    for entry in entries:
        if entry.name.startswith("."):
            skipped["hidden entries"] += 1
        elif entry.is_symlink():
            skipped["symbolic links (never followed)"] += 1
        elif entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), skipped)
        elif entry.is_file(follow_symlinks=False):
            yield Path(entry.path)
        else:
            skipped["special files (FIFOs, sockets, devices)"] += 1


@dataclass(frozen=True)
class FoundFile:
    """A regular file met by the walk, with what its directory entry said about it."""

    path: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FileFilter:
    """Which files a walk yields: shell patterns, case-insensitive, and a modification time.

    A pattern without ``/`` is matched against the name, one with ``/`` against the path
    below the root (``*`` crosses folders there: ``2019/*`` is everything under 2019/).
    ``exclude`` also prunes folders; ``include`` (empty: everything) only selects files.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    since: datetime | None = None  # only files modified at or after this time

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", tuple(p.lower() for p in self.include))
        object.__setattr__(self, "exclude", tuple(p.lower() for p in self.exclude))

    def wants_folder(self, relative: str) -> bool:
        return not _matches(self.exclude, relative)

    def wants_file(self, relative: str, mtime_ns: int) -> bool:
        if self.include and not _matches(self.include, relative):
            return False
        if _matches(self.exclude, relative):
            return False
        return self.since is None or mtime_ns >= self.since.timestamp() * 1e9


def _matches(patterns: tuple[str, ...], relative: str) -> bool:
    relative = relative.lower()
    name = relative.rpartition("/")[2]
    return any(fnmatch.fnmatchcase(relative if "/" in p else name, p) for p in patterns)


def walk_files(
    roots: Iterable[Path],
    filters: FileFilter | None = None,
    on_error: Callable[[Path, OSError], None] | None = None,
) -> Iterator[FoundFile]:
    """Regular files below ``roots``, streamed: one folder's listing at a time, never the tree's.

    A folder's files come as the directory lists them, then its subfolders in name order.
    Hidden entries are skipped and symbolic links are not followed. A folder that cannot be
    read is reported to ``on_error`` and skipped. Paths are absolute but not resolved, so a
    file is named the way it was found.
    """
    filters = filters or FileFilter()
    for root in distinct_roots(roots):
        if not root.is_dir():
            try:
                st = root.stat()
            except OSError as exc:
                if on_error:
                    on_error(root, exc)
                continue
            if filters.wants_file(root.name, st.st_mtime_ns):
                yield FoundFile(root, st.st_size, st.st_mtime_ns)
            continue
        folders: list[tuple[Path, str]] = [(root, "")]
        while folders:
            folder, prefix = folders.pop()
            subfolders: list[tuple[Path, str]] = []
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if entry.name.startswith("."):
                            continue
                        relative = prefix + entry.name
                        if entry.is_dir(follow_symlinks=False):
                            if filters.wants_folder(relative):
                                subfolders.append((Path(entry.path), relative + "/"))
                            continue
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue  # gone since the listing
                        if filters.wants_file(relative, st.st_mtime_ns):
                            yield FoundFile(Path(entry.path), st.st_size, st.st_mtime_ns)
            except OSError as exc:
                if on_error:
                    on_error(folder, exc)
            # Popped from the end: reversed, so that subfolders are walked in name order.
            folders.extend(sorted(subfolders, reverse=True))


def distinct_roots(roots: Iterable[Path]) -> list[Path]:
    """Absolute roots, each once; a root inside another is dropped (it would be walked twice)."""
    found: list[Path] = []
    for root in (r.expanduser().absolute() for r in roots):
        if root not in found:
            found.append(root)
    return [r for r in found if not any(o != r and r.is_relative_to(o) for o in found)]
