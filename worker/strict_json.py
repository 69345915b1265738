"""Figures as strict JSON: NaN and ±infinity, which ``json.dumps`` writes as the non-standard
``NaN`` and ``Infinity``, become null, so every parser reads the file.

An undefined figure (a rate over no films: NaN) and an unbounded one (a ratio over zero: inf)
both have no JSON number; null says "no figure". Used by the drift report
(``worker/drift/output.py``) and the site check's files (``training/site_check.py``). A leaf.
"""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float in it (nested in dicts, lists and tuples; a tuple
    becomes a list, as JSON has it) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
