"""Claiming: taking a file out of the inbox so that no other worker can take it too.

A claim is one atomic rename into this worker's work area on the same file system
(``inbox/.xray-screen/<worker-id>/``): of several workers racing for a file, exactly one
rename succeeds. The work area is the worker's queue: a file stays there until its
outcome is committed and it has been filed, so a crash at any moment leaves it where a
restart finds it. A worker that died (its heartbeat file is older than the lease, see
``worker/runtime/lease.py``) has its claimed files taken over by a live one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from worker.errors import ConfigError, TransientError
from worker.names import NAME_MAX, fit

log = logging.getLogger(__name__)

WORK_DIR = ".xray-screen"
HEARTBEAT = ".alive"
LOCK = ".lock"
_SEP = "~"


@dataclass(frozen=True)
class Claimed:
    """A file in a work area, and where it was found."""

    path: Path  # where it is now, in the work area
    source: str  # its path relative to the inbox when it was claimed
    token: str  # unique id of this claim
    claimed_at: float

    @property
    def name(self) -> str:
        return Path(self.source).name


class WorkArea:
    """One worker's claimed files, under ``inbox/.xray-screen/<worker_id>/``."""

    def __init__(self, inbox: Path, worker_id: str):
        self.inbox = inbox
        self.worker_id = worker_id
        self.root = inbox / WORK_DIR / worker_id
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = self._take_lock()
        self.heartbeat()

    def _take_lock(self) -> int:
        """One live worker per work area: a second one with the same id is refused."""
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"another worker with id {self.worker_id!r} is already using {self.inbox}: "
                "give each worker on this inbox its own [inbox] worker_id"
            ) from None
        return fd

    def close(self) -> None:
        os.close(self._lock)

    def heartbeat(self) -> None:
        """Tell other workers this one is alive (the file's mtime); TransientError if it cannot."""
        try:
            (self.root / HEARTBEAT).touch()
        except OSError as exc:
            self.check()
            raise TransientError(f"cannot touch {self.root / HEARTBEAT}: {exc.strerror or exc}") from exc

    def check(self) -> None:
        """TransientError when the work area is out of reach (the inbox's share dropped)."""
        if not self.root.is_dir():
            raise TransientError(f"the inbox {self.inbox} is not there (a share that dropped?)")

    def claim(self, path: Path, *, bare: bool = False) -> Claimed | None:
        """Move ``path`` into the work area; None if someone else took (or removed) it first.

        The claimed file is named ``<token>~<name>``, cut to NAME_MAX only when the name is
        too long for the prefix (``worker.names.fit``): then its note, which keeps the whole
        name, is fsynced. ``bare`` names it ``<token>~`` alone, for a name that something
        unexpected stopped us from fitting.
        """
        token = uuid.uuid4().hex[:16]
        source = str(path.relative_to(self.inbox))
        name = f"{token}{_SEP}" if bare else fit(f"{token}{_SEP}{path.name}")
        target = self.root / name
        try:
            path.rename(target)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TransientError(f"cannot claim {path}: {exc.strerror or exc}") from exc
        claimed = Claimed(target, source, token, time.time())
        try:
            self._write_note(claimed, durable=name != f"{token}{_SEP}{path.name}")
        except OSError as exc:  # the share dropped just now: the file name still says enough
            log.warning("cannot write the claim note for %s: %s", source, exc.strerror or exc)
        return claimed

    def _write_note(self, claimed: Claimed, *, durable: bool = False) -> None:
        note = self.root / f"{claimed.token}.claim.json"
        # Not fsynced when the claimed name is whole: losing a note to a power cut only loses
        # the source's folder, and a rename that did not reach the disk leaves the file in the
        # inbox. A shortened (or bare) name needs its note to be filed under its own name.
        with note.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps({"source": claimed.source, "claimed_at": claimed.claimed_at}))
            if durable:
                fh.flush()
                os.fsync(fh.fileno())

    def release(self, claimed: Claimed) -> None:
        """Forget a claim whose file has been filed."""
        (self.root / f"{claimed.token}.claim.json").unlink(missing_ok=True)

    def pending(self) -> list[Claimed]:
        """Files claimed and not yet filed, oldest claim first; notes of filed ones are dropped."""
        claims = sorted(self._scan(self.root), key=lambda c: (c.claimed_at, c.path.name))
        tokens = {c.token for c in claims}
        for note in self.root.glob("*.claim.json"):
            if note.name.removesuffix(".claim.json") not in tokens:
                note.unlink(missing_ok=True)  # its file was filed, then the process died
        return claims

    def _scan(self, root: Path) -> Iterator[Claimed]:
        """The claimed files in ``root``; a file or note another worker moves away meanwhile
        (adopting them too) is no error."""
        with os.scandir(root) as listing:
            entries = list(listing)
        for entry in entries:
            if entry.name.startswith(".") or entry.name.endswith(".claim.json"):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                claimed_at = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            token, sep, name = entry.name.partition(_SEP)
            source = name or entry.name
            note = root / f"{token}.claim.json"
            if sep:
                try:
                    facts = json.loads(note.read_text())
                    source, claimed_at = facts["source"], float(facts["claimed_at"])
                except FileNotFoundError:
                    pass  # no note: the file's name says enough
                except (OSError, ValueError, KeyError):
                    log.warning("unreadable claim note %s; using the file name", note)
            yield Claimed(Path(entry.path), source, token if sep else uuid.uuid4().hex[:16], claimed_at)

    def adopt_abandoned(self, lease_seconds: float) -> list[Claimed]:
        """Take over the claims of workers whose heartbeat is older than the lease; the adopted
        claims, oldest first.

        A heartbeat's age is measured against this worker's own, touched just now on the same
        file system: where the file server stamps modification times, the machines' clocks
        need not agree. A claim keeps its token, so its audit row's id stays the same.
        """
        now = self._share_now()
        adopted: list[Claimed] = []
        for other in sorted((self.inbox / WORK_DIR).iterdir()):
            if other == self.root or not other.is_dir():
                continue
            age = now - _last_beat(other)
            if age < lease_seconds:
                continue
            taken = [mine for claimed in self._scan(other) if (mine := self._take(other, claimed))]
            if taken:
                log.info("adopted %d files from worker %s (silent for %.0f s)", len(taken), other.name, age)
            adopted += taken
        return sorted(adopted, key=lambda c: (c.claimed_at, c.path.name))

    def _share_now(self) -> float:
        self.heartbeat()
        return (self.root / HEARTBEAT).stat().st_mtime

    def _take(self, other: Path, claimed: Claimed) -> Claimed | None:
        name = claimed.path.name
        if not name.startswith(f"{claimed.token}{_SEP}"):
            name = fit(f"{claimed.token}{_SEP}{name}")  # a token of its own from now on
        target = self.root / name
        try:
            claimed.path.rename(target)
        except FileNotFoundError:
            return None  # another live worker adopted it first
        note = f"{claimed.token}.claim.json"
        with contextlib.suppress(FileNotFoundError):  # a claim without a note: its name says enough
            (other / note).replace(self.root / note)
        return Claimed(target, claimed.source, claimed.token, claimed.claimed_at)


def _last_beat(work_root: Path) -> float:
    """When a worker last showed it was alive: its heartbeat's mtime (its folder's, if none)."""
    beat = work_root / HEARTBEAT
    try:
        with beat.open("rb") as fh:  # an open revalidates cached attributes on NFS (close-to-open)
            return os.fstat(fh.fileno()).st_mtime
    except FileNotFoundError:
        return work_root.stat().st_mtime
    except PermissionError:
        return beat.stat().st_mtime


def default_worker_id() -> str:
    """The host name: stable across restarts, so a restarted worker finds its own claims."""
    host = os.uname().nodename.split(".")[0] or "host"
    return host[: NAME_MAX // 2]
