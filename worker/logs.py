"""Logging for journald: one record, one line, no forged lines, nothing a terminal obeys.

A file name may contain a newline, an ANSI escape sequence or bytes that are not UTF-8;
logged raw, it could start what looks like a new, made-up log line, recolour or retitle
an operator's terminal, or fail to encode. The formatter escapes them in every message
(``worker.names.for_log``); tracebacks, added after the message, keep their lines.
"""

from __future__ import annotations

import logging

from worker.names import for_log

FORMAT = "%(levelname)s %(name)s: %(message)s"
# Libraries whose INFO lines are about themselves, not about the files a worker handles:
# Alembic says "Context impl SQLiteImpl." and "Will assume non-transactional DDL." each time
# the schema is checked. They log at WARNING and above, or everything with DEBUG.
QUIET = ("alembic",)


class OneLineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return for_log(super().formatMessage(record))


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
