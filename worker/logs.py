"""Logging for journald: one record, one line, no forged lines.

A file name may contain a newline or other control characters; logged raw, it could start
what looks like a new, made-up log line. The formatter escapes them in every message
(tracebacks, added after the message, keep their lines).
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
FORMAT = "%(levelname)s %(name)s: %(message)s"


def escape_controls(text: str) -> str:
    r"""``a\nb`` -> ``a\\nb``: control characters written as Python escapes."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class OneLineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
