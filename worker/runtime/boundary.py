"""The fault boundary around each file: something unexpected while one file is handled fails
that file, never the daemon or the scan.

The errors this project raises on purpose say what happens next (``worker/errors.py``).
Anything else raised while one file is claimed, hashed, decoded, recorded, moved or given
its error sidecar is a bug, or a condition nobody foresaw for that file (a name, a tag, a
value). Each stage catches it for the one file it concerns and calls ``contain``: the
traceback is logged once, and the file fails with the reason
``internal error: <type>: <message>``, with its audit row, like any other failed file.
The others go on. Conditions that concern every file (the database down, the disk full, the
share gone) arrive as ``TransientError`` and are never caught here: the loop waits and
retries, as before.
"""

from __future__ import annotations

import logging

from worker.names import for_log

log = logging.getLogger(__name__)


def internal_reason(exc: BaseException) -> str:
    """``internal error: <type>: <message>``, safe to store and to log."""
    message = " ".join(str(exc).split())
    return for_log(
        f"internal error: {type(exc).__name__}: {message}"
        if message
        else f"internal error: {type(exc).__name__}"
    )


def contain(stage: str, name: str, exc: BaseException) -> str:
    """Log ``exc`` with its traceback, once, as an internal error of one file at one stage;
    return that file's failure reason."""
    log.error("internal error %s %s; this file fails, the others go on", stage, name, exc_info=exc)
    return internal_reason(exc)
