"""Where a received instance becomes a file in the inbox, durably, before Success is answered.

One instance, one file, written so that the daemon never sees part of it:

1. the File Meta and the data set, exactly as the peer encoded it, go into a hidden temporary
   file in the inbox folder (``.receive-<host>-<pid>-<random>.tmp``: hidden, and ``*.tmp``,
   so ``watch`` ignores it twice over), which is fsynced;
2. the file is read back and parsed: a data set that does not parse, or has no valid SOP
   Instance UID, is refused (0xC000) and never gets a final name;
3. it is hard-linked to ``<SOPInstanceUID>.dcm`` (never overwriting: a name taken by an
   earlier copy of the same instance gives ``<SOPInstanceUID>-1.dcm``, ``-2``...), the
   temporary name is removed and the folder fsynced.

Only then does ``store`` return, and only then does the receiver answer Success. Any failure
removes the temporary file; a full disk (ENOSPC, EDQUOT) or any other write failure is
refused with 0xA700 (out of resources: the sender keeps the instance and tries again later).
A crash at any step leaves at most a hidden temporary file, removed at the next start.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import socket
import threading
from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement

from worker.malformed import MALFORMED
from worker.runtime.lease import process_alive

log = logging.getLogger(__name__)

# DIMSE statuses the receiver answers (PS3.4 Annex B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000

TEMP_PREFIX = ".receive-"
TEMP_SUFFIX = ".tmp"
# A UID is digits and dots, at most 64 characters (PS3.5 9.1); nothing else becomes a name.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_MAX_COPIES = 1000
_UNDEFINED = 0xFFFFFFFF
# Hard links are the no-clobber rename; file systems without them get a locked check instead.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


class Refused(Exception):
    """An instance not stored, with the DIMSE status to answer and the reason to log."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def file_name(uid: object) -> str:
    """``<uid>.dcm`` for a valid SOP Instance UID; ``Refused`` (0xC000) for anything else."""
    text = str(uid).strip(" \0")
    if len(text) > 64 or not _UID.fullmatch(text):
        raise Refused(CANNOT_UNDERSTAND, "SOP Instance UID is not a valid UID (digits and dots, 64 at most)")
    return text


class InboxWriter:
    """Writes instances into one folder, atomically and durably (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._tag = f"{socket.gethostname()}-{os.getpid()}"
        self._lock = threading.Lock()  # the fallback publish: check-then-rename, one at a time

    def prepare(self) -> None:
        """Create the folder if need be, and remove this host's temporary files left by a dead
        receiver (a crash before the rename): they were never answered Success."""
        self.folder.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        for leftover in self.folder.glob(f"{TEMP_PREFIX}{host}-*{TEMP_SUFFIX}"):
            pid = leftover.name[len(TEMP_PREFIX) + len(host) + 1 :].split("-", 1)[0]
            if pid.isdigit() and not process_alive(int(pid)):
                leftover.unlink(missing_ok=True)
                log.info("removed %s, left by a receiver that stopped mid-write", leftover.name)

    def store(self, parts: Iterable[bytes | memoryview]) -> Path:
        """Write one DICOM file (its encoded parts, in order); its final path. ``Refused``."""
        temp = self.folder / f"{TEMP_PREFIX}{self._tag}-{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            _write_synced(temp, parts)
            uid = file_name(_parsed_uid(temp))
            target = self._publish(temp, uid)
            _sync_folder(self.folder)
        except OSError as exc:
            raise Refused(OUT_OF_RESOURCES, _os_reason(exc)) from None
        finally:
            temp.unlink(missing_ok=True)
        return target

    def _publish(self, temp: Path, uid: str) -> Path:
        """Give the temporary file its final name, never replacing another file."""
        for n in range(_MAX_COPIES):
            target = self.folder / (f"{uid}.dcm" if n == 0 else f"{uid}-{n}.dcm")
            try:
                os.link(temp, target)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                with self._lock:
                    if target.exists():
                        continue
                    temp.replace(target)
            return target
        raise Refused(OUT_OF_RESOURCES, f"{_MAX_COPIES} copies of this instance are already waiting")


def _write_synced(path: Path, parts: Iterable[bytes | memoryview]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "wb") as fh:
        for part in parts:
            fh.write(part)
        fh.flush()
        os.fsync(fh.fileno())


def _parsed_uid(path: Path) -> object:
    """The SOP Instance UID of a file that parses, whole, to its last byte; ``Refused`` (0xC000).

    pydicom is lenient: it reads a value cut short by the end of the data, and stops with a
    warning (not an error) at an element of undefined length that never ends. Both are
    checked here: the reading must end at the end of the file, and each element hold the
    length it declares. Then every value is parsed, as the daemon will.
    """
    try:
        with path.open("rb") as fh:
            ds = pydicom.dcmread(fh)
            complete = fh.tell() == os.fstat(fh.fileno()).st_size
        if not complete:
            raise Refused(CANNOT_UNDERSTAND, "data set is truncated (an element never ends)")
        for raw in ds.elements():
            short = isinstance(raw, RawDataElement) and raw.value is not None and raw.length != _UNDEFINED
            if short and len(raw.value) != raw.length:
                raise Refused(CANNOT_UNDERSTAND, f"data set is truncated in element {raw.tag}")
        for element in ds.iterall():  # every value parsed now, not by the daemon later
            _ = element.value
        uid = ds.get("SOPInstanceUID")
    except OSError as exc:
        if exc.errno is not None:  # the disk, not the data
            raise
        raise Refused(CANNOT_UNDERSTAND, f"data set does not parse: {exc}") from None
    except MALFORMED as exc:
        raise Refused(CANNOT_UNDERSTAND, f"data set does not parse: {type(exc).__name__}") from None
    if not uid:
        raise Refused(CANNOT_UNDERSTAND, "data set has no SOP Instance UID")
    return uid


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the inbox's disk is full"
    name = errno.errorcode.get(exc.errno or 0, "error")
    return f"cannot write into the inbox: {name} {exc.strerror or exc}"
