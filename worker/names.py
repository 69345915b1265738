"""File names as a share holds them: any bytes but ``/`` and NUL, kept, stored and shown losslessly.

A POSIX file name is bytes. Python hands a name that is not valid UTF-8 (a Latin-1 name
written by an old Windows client over SMB, say) to us as a ``str`` in which each
undecodable byte is a lone surrogate, U+DC80 to U+DCFF (PEP 383). Such a ``str`` opens,
renames and links fine, but cannot be encoded as UTF-8: a database column, a CSV, a JSON
file for other tools or a terminal would raise on it. So the name stays as Python gave it
everywhere a file is touched, and every place that writes a name as text goes through here:

- ``as_text(name)``: the name with each undecodable byte written as ``\\xNN`` (``\\xe9t\\xe9.jpeg``);
  a valid UTF-8 name is returned unchanged. Readable, and valid UTF-8.
- ``as_hex(name)``: the name's raw bytes in hex, only when they are not valid UTF-8 (else
  None). A literal ``\\xe9`` typed into a name and a raw 0xE9 byte read the same as text; the
  hex tells them apart, so (text, hex) together give the bytes back: ``from_stored``.
- ``fit(name, suffix)``: the name cut to NAME_MAX bytes, keeping its extension, cut only
  where the limit forces it and never inside a character.
- ``for_log(text)``: one line for journald and a terminal: control characters (C0, DEL, C1,
  so no ANSI escape sequence reaches a terminal), bidirectional overrides and undecodable
  bytes written as Python escapes.
"""

from __future__ import annotations

import os
import re

NAME_MAX = 255  # bytes, for one path component on Linux file systems
MAX_EXTENSION = 16  # a longer "extension" is part of the name, not a type to keep

# C0 controls, DEL, C1 controls (U+009B is a one-character CSI), the bidirectional
# embeddings, overrides and isolates ("Trojan Source"), and the lone surrogates of
# undecodable bytes.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def is_utf8(name: str) -> bool:
    """True when the name's bytes are valid UTF-8 (no surrogate-escaped byte in it)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def as_text(name: str) -> str:
    r"""The name as valid UTF-8 text: each undecodable byte written as ``\xNN``."""
    if is_utf8(name):
        return name
    return os.fsencode(name).decode("utf-8", errors="backslashreplace")


def as_hex(name: str) -> str | None:
    """The name's raw bytes in hex when they are not valid UTF-8; None when ``as_text`` is exact."""
    return None if is_utf8(name) else os.fsencode(name).hex()


def as_fields(key: str, name: str) -> dict[str, str]:
    """``{key: text}``, plus ``{key}_hex`` for a name that is not valid UTF-8 (for JSON output)."""
    raw = as_hex(name)
    return {key: as_text(name), f"{key}_hex": raw} if raw else {key: name}


def from_stored(text: str, hex_bytes: str | None) -> str:
    """The name back from ``as_text`` and ``as_hex`` (as Python names files: surrogate-escaped)."""
    return os.fsdecode(bytes.fromhex(hex_bytes)) if hex_bytes else text


def byte_length(name: str) -> int:
    return len(os.fsencode(name))


def cut(name: str, budget: int) -> str:
    """The longest start of ``name`` whose bytes fit ``budget``, ending on a whole character."""
    kept, used = [], 0
    for char in name:
        size = len(os.fsencode(char))
        if used + size > budget:
            break
        kept.append(char)
        used += size
    return "".join(kept)


def fit(name: str, suffix: str = "") -> str:
    """``name`` with ``suffix`` before its extension, cut so the whole fits NAME_MAX bytes.

    Only the part before the extension is shortened, and only by what the limit forces. A
    name ending in a dot, or whose "extension" is longer than 16 bytes, has none.
    """
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or not ext or byte_length(ext) > MAX_EXTENSION:
        stem, ext = name, ""
    ext = f".{ext}" if ext else ""
    if byte_length(stem) + byte_length(suffix + ext) <= NAME_MAX:
        return stem + suffix + ext
    return cut(stem, NAME_MAX - byte_length(suffix + ext)) + suffix + ext


def for_log(text: str) -> str:
    r"""``a\nb`` -> ``a\\nb``, ``\x1b[31m`` -> ``\\x1b[31m``, byte 0xE9 -> ``\\xe9``: one safe line."""
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if "\udc80" <= char <= "\udcff":  # an undecodable byte, as PEP 383 carries it
        return f"\\x{ord(char) - 0xDC00:02x}"
    return repr(char)[1:-1] if ord(char) < 0x100 else f"\\u{ord(char):04x}"
