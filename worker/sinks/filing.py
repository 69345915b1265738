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

from worker.names import NAME_MAX, as_hex, as_text, cut, fit

__all__ = ["NAME_MAX", "dated_folder", "fit", "move_no_clobber", "safe_component", "write_error_sidecar"]

_UNSAFE_COMPONENT = re.compile(r"[/\\\x00]")


def safe_component(text: str) -> str:
    """A string usable as one folder name: no separators, no '.' or '..', not empty."""
    cleaned = _UNSAFE_COMPONENT.sub("_", text).strip() or "_"
    return "_" + cleaned if cleaned in (".", "..") else cleaned


def _candidates(name: str) -> Iterator[str]:
    yield fit(name)
    for n in range(1, 100_000):
        yield fit(name, f"-{n}")
    raise FileExistsError(f"no free name for {name!r}")


def dated_folder(root: Path, when: datetime, *parts: str) -> Path:
    return root.joinpath(*(safe_component(p) for p in parts), when.strftime("%Y-%m-%d"))


def move_no_clobber(
    src: Path, folder: Path, name: str, *, placed: Callable[[Path], None] | None = None
) -> Path:
    """Move ``src`` into ``folder`` as ``name`` (or ``name-1``, ``name-2``...); return the new path.

    ``placed(new_path)`` runs once the file has its new name and, where the file system has
    hard links, still its old one: what it writes (a sidecar, a corrected database row) is
    done before the old name goes. Should it raise, the move is taken back: the file is left
    under its old name alone, and the error raised. A move interrupted at that point (a crash) is finished by
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
            try:
                placed(dst)
            except BaseException:
                _undo(src, dst, kept)  # the file keeps one name: where it was
                raise
        if kept:
            src.unlink()
        fsync_dir(src.parent)
        return dst
    raise AssertionError("unreachable")  # pragma: no cover


def _undo(src: Path, dst: Path, kept: bool) -> None:
    """Take back a move whose ``placed`` step raised: the file is left under ``src`` alone."""
    try:
        if kept:
            dst.unlink()
        else:
            dst.rename(src)
    except OSError:
        pass  # still under both names, or at dst alone: the next move finishes it either way


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
    """``<name>.error.json`` beside a failed file: why it failed, when, its hash.

    Names in it are text as ``worker.names.as_text`` writes them, with ``<key>_hex`` beside
    any that is not valid UTF-8, so the JSON is valid UTF-8 and still names the file exactly.
    """
    head = cut(moved.name, NAME_MAX - len(".error.json"))
    sidecar = moved.with_name(head + ".error.json")
    tmp = moved.with_name(f".{cut(head, NAME_MAX - 5)}.tmp")  # one per file: a crash's leftover is reused
    fields: dict[str, Any] = {"file": moved.name, **details}
    for key in [k for k, v in fields.items() if isinstance(v, str) and as_hex(v)]:
        fields[f"{key}_hex"] = as_hex(fields[key])
        fields[key] = as_text(fields[key])
    tmp.write_text(json.dumps(fields, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(sidecar)
    return sidecar
