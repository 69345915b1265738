"""Filing: moving a screened file to processed/ or failed/, never overwriting, never losing it.

A move is a hard link to the new name followed by removing the old one: the link fails if
the name exists (so nothing is ever overwritten, even by another worker at the same
instant), and at every moment the file exists under at least one name. Across file
systems the content is copied to a temporary name, fsynced, then linked into place. The
folders are fsynced so the move survives a power cut.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

NAME_MAX = 255  # bytes, for one path component on Linux file systems
_UNSAFE_COMPONENT = re.compile(r"[/\\\x00]")


def safe_component(text: str) -> str:
    """A string usable as one folder name: no separators, no '.' or '..', not empty."""
    cleaned = _UNSAFE_COMPONENT.sub("_", text).strip() or "_"
    return "_" + cleaned if cleaned in (".", "..") else cleaned


def fit_name(name: str, suffix: str = "") -> str:
    """``name`` with ``suffix`` before its extension, cut so the whole fits NAME_MAX bytes."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 16:
        stem, ext = name, ""
    ext = f".{ext}" if ext else ""
    budget = NAME_MAX - len((suffix + ext).encode())
    stem_bytes = stem.encode()[:budget]
    return stem_bytes.decode(errors="ignore") + suffix + ext


def _candidates(name: str) -> Iterator[str]:
    yield fit_name(name)
    for n in range(1, 100_000):
        yield fit_name(name, f"-{n}")
    raise FileExistsError(f"no free name for {name!r}")


def dated_folder(root: Path, when: datetime, *parts: str) -> Path:
    return root.joinpath(*(safe_component(p) for p in parts), when.strftime("%Y-%m-%d"))


def move_no_clobber(
    src: Path, folder: Path, name: str, *, placed: Callable[[Path], None] | None = None
) -> Path:
    """Move ``src`` into ``folder`` as ``name`` (or ``name-1``, ``name-2``...); return the new path.

    ``placed(new_path)`` runs once the file has its new name and, where the file system has
    hard links, still its old one: what it writes (a sidecar, a corrected database row) is
    done before the old name goes. A move interrupted at that point (a crash) is finished by
    the next call: a candidate that is already a hard link to ``src`` is this file, not a
    name taken by another one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for candidate in _candidates(name):
        dst = folder / candidate
        try:
            kept = _place(src, dst)
        except FileExistsError:
            if not _same_file(src, dst):
                continue
            kept = True  # linked here by a move that died before removing the old name
        fsync_dir(folder)
        if placed is not None:
            placed(dst)
        if kept:
            src.unlink()
        fsync_dir(src.parent)
        return dst
    raise AssertionError("unreachable")  # pragma: no cover


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _place(src: Path, dst: Path) -> bool:
    """Give ``src`` the name ``dst`` too; FileExistsError if ``dst`` is taken.

    Returns False when the file could only be renamed (its old name is already gone).
    """
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            _copy_across(src, dst)
            return True
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links on this file system (some SMB shares): check, then rename.
        if os.path.lexists(dst):
            raise FileExistsError(dst) from None
        src.rename(dst)
        return False
    return True


def _copy_across(src: Path, dst: Path) -> None:
    """Another file system: copy to a temporary name, fsync, then take ``dst``."""
    tmp = dst.parent / f".{uuid.uuid4().hex}.partial"
    try:
        with src.open("rb") as fin, tmp.open("xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
        try:
            os.link(tmp, dst)
        except FileExistsError:
            raise
        except OSError:
            if os.path.lexists(dst):
                raise FileExistsError(dst) from None
            tmp.rename(dst)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network file systems refuse fsync on a folder; the data is still there
    finally:
        os.close(fd)


def write_error_sidecar(moved: Path, details: dict[str, Any]) -> Path:
    """``<name>.error.json`` beside a failed file: why it failed, when, its hash."""
    tail = ".error.json"
    head = moved.name.encode()[: NAME_MAX - len(tail)].decode(errors="ignore")
    sidecar = moved.with_name(head + tail)
    tmp = moved.with_name(f".{head}.tmp")  # one per file: a crash's leftover is reused, not left behind
    tmp.write_text(json.dumps({"file": moved.name, **details}, indent=2, default=str) + "\n")
    tmp.replace(sidecar)
    return sidecar
