"""Finding files: what is in the inbox, and which files are complete enough to take.

Events come from watchdog: the native observer (inotify) for local folders, or a polling
observer for network shares, which deliver no inotify events. Events are only hints: a
periodic full rescan reconciles whatever they missed (queue overflow, a share that
reconnected), and at start-up the inbox is scanned before anything else. A file is taken
only when its size and modification time have stayed the same for the stability window,
so a file copied in slowly over a share is never read half-written.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from worker.config import DEFAULT_IGNORE
from worker.sources.claim import WORK_DIR

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


class Inbox:
    """The inbox folder: watch it, and hand out paths that are complete."""

    def __init__(
        self,
        root: Path,
        *,
        recursive: bool = False,
        ignore: Sequence[str] = DEFAULT_IGNORE,
        stability_seconds: float = 2.0,
        polling: bool = False,
        poll_interval: float = 2.0,
        rescan_interval: float = 60.0,
        clock=time.monotonic,
    ):
        self.root = root
        self.recursive = recursive
        self.ignore = tuple(ignore)
        self.stability = stability_seconds
        self.polling = polling
        self.poll_interval = poll_interval
        self.rescan_interval = rescan_interval
        self.clock = clock
        self.wakeup = threading.Event()
        self._lock = threading.Lock()
        self._hints: set[Path] = set()
        self._waiting: dict[Path, _Seen] = {}
        self._ready: deque[Path] = deque()
        self._queued: set[Path] = set()
        self._told: set[Path] = set()  # odd entries already logged once
        self._left: set[Path] = set()  # files not to hand out again (``leave``)
        self._next_rescan = 0.0
        self._looked = False  # the first full scan done (an empty inbox is told once)
        self._observer: Observer | PollingObserver | None = None
        self._watched: tuple[int, int] | None = None
        self._lost = False

    # -- watching ------------------------------------------------------------------

    def start(self) -> None:
        """Start the observer; the first ``ready()`` call scans the whole inbox."""
        observer = PollingObserver(timeout=self.poll_interval) if self.polling else Observer()
        observer.schedule(_Hints(self), str(self.root), recursive=self.recursive)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._watched = _identity(self.root)
        log.info(
            "watching %s (%s%s)",
            self.root,
            "polling" if self.polling else "inotify",
            ", recursive" if self.recursive else "",
        )

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def hint(self, path: Path) -> None:
        with self._lock:
            self._hints.add(path)
        self.wakeup.set()

    @property
    def alive(self) -> bool:
        """False once watching has stopped: the folder vanished, or is not the one watched."""
        observer = self._observer
        if observer is None:
            return True
        running = observer.is_alive() and all(e.is_alive() for e in observer.emitters)
        return running and _identity(self.root) == self._watched

    def _rewatch(self) -> None:
        """The observer dies with its folder (a share that dropped): watch again once it is back."""
        if self._observer is None:
            return
        if self.alive:
            if self._lost:
                log.warning("the inbox %s is back", self.root)
                self._lost, self._next_rescan = False, 0.0  # events were missed meanwhile
            return
        if _identity(self.root) is None:
            if not self._lost:
                log.warning("the inbox %s is gone; waiting for it to come back", self.root)
                self._lost = True
            return
        dead = self._observer
        self.stop()
        try:
            self.start()
        except OSError as exc:  # gone again already
            log.warning("cannot watch %s yet: %s", self.root, exc.strerror or exc)
            self._observer = dead  # stopped: alive stays False, so this is tried again
            return
        log.warning("the inbox %s is back (or was replaced): watching it again", self.root)
        self._lost, self._next_rescan = False, 0.0

    # -- deciding what is ready ------------------------------------------------------

    def backlog(self) -> int:
        """Files seen and not yet handed out (waiting for stability or ready)."""
        return len(self._waiting) + len(self._ready)

    def leave(self, path: Path) -> None:
        """Never hand ``path`` out again in this process: something unexpected stopped its claim
        twice (the daemon has logged why), so it stays in the inbox until the next start."""
        self._left.add(path)
        self._waiting.pop(path, None)

    def take(self, limit: int) -> list[Path]:
        """Up to ``limit`` complete files, oldest first; rescans when one is due."""
        self._refresh()
        taken = []
        while self._ready and len(taken) < limit:
            path = self._ready.popleft()
            self._queued.discard(path)
            taken.append(path)
        return taken

    def next_check_in(self) -> float:
        """Seconds until a waiting file could become stable, or a rescan is due."""
        now = self.clock()
        soonest = self._next_rescan - now
        if not self.alive:
            soonest = min(soonest, self.poll_interval)  # look for the folder's return
        for seen in self._waiting.values():
            soonest = min(soonest, seen.since + self.stability - now)
        return max(0.05, soonest)

    def _refresh(self) -> None:
        self._rewatch()
        now = self.clock()
        with self._lock:
            hints, self._hints = self._hints, set()
        self.wakeup.clear()
        if now >= self._next_rescan:
            found = list(self._scan())
            if not self._looked:
                self._looked = True
                self._tell_if_empty(found)
            hints.update(found)
            self._next_rescan = now + self.rescan_interval
        for path in hints:
            if path not in self._queued:
                self._observe(path, now)
        for path in list(self._waiting):
            self._observe(path, now)

    def _observe(self, path: Path, now: float) -> None:
        if path in self._left:
            return
        try:
            st = path.lstat()
        except FileNotFoundError:
            self._waiting.pop(path, None)
            return
        except OSError:
            return  # a share's I/O error: look again later
        if not stat.S_ISREG(st.st_mode) or self._ignored(path):
            self._waiting.pop(path, None)
            self._tell_once(path, st.st_mode)
            return
        seen = self._waiting.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._waiting[path] = _Seen(st.st_size, st.st_mtime_ns, now)
            return
        if now - seen.since >= self.stability:
            del self._waiting[path]
            self._ready.append(path)
            self._queued.add(path)

    def _ignored(self, path: Path) -> bool:
        name = path.name
        if name.startswith("."):
            return True
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.ignore)

    def _tell_once(self, path: Path, mode: int) -> None:
        if path in self._told or self._ignored(path) or stat.S_ISDIR(mode):
            return
        self._told.add(path)
        kind = "symbolic link" if stat.S_ISLNK(mode) else "FIFO" if stat.S_ISFIFO(mode) else "special file"
        log.warning("leaving %s in the inbox: a %s is never followed or moved", path, kind)

    def _tell_if_empty(self, found: list[Path]) -> None:
        """At the first look: an inbox with nothing to take says where files go (once)."""
        if any(not self._ignored(path) for path in found):
            return
        log.info(
            "the inbox %s is empty: copy or move X-rays (PNG, JPEG, DICOM) into it to screen them",
            self.root,
        )

    def _scan(self) -> Iterator[Path]:
        yield from _walk(self.root, self.recursive)


def _identity(folder: Path) -> tuple[int, int] | None:
    """The folder's (device, inode), or None when it is not there."""
    try:
        st = folder.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _walk(folder: Path, recursive: bool) -> Iterator[Path]:
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        log.warning("cannot list %s: %s", folder, exc.strerror or exc)
        return
    for entry in entries:
        if entry.name == WORK_DIR:
            continue
        if recursive and entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
            yield from _walk(Path(entry.path), recursive)
        else:
            yield Path(entry.path)


class _Hints(FileSystemEventHandler):
    """watchdog events become hints; the inbox decides what they mean."""

    def __init__(self, inbox: Inbox):
        self.inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        for attr in ("src_path", "dest_path"):
            raw = getattr(event, attr, "")
            if raw:
                path = Path(os.fsdecode(raw))
                if WORK_DIR not in path.parts:
                    self.inbox.hint(path)
