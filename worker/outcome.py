"""What became of a file: one of a few outcomes, the same word in the database, the logs,
``--output`` and the code.

- ``screened``: the model judged it; its result row holds the label and probabilities.
- ``duplicate``: the same content was already judged by this model (earlier, or in the same
  batch): it gets that verdict without running the model again.
- ``failed``: it could not be screened; the reason says why.
- ``out_of_scope``: the gate refused it (``worker/pipeline/gate.py``): a file this model
  cannot judge (another modality, body part or view, or an image unlike its training
  films). Neither a verdict nor a failure; the reason says why.

A ``StrEnum``, so it is stored and compared as its text (``Outcome.FAILED == "failed"``).
"""

from __future__ import annotations

import re
from enum import StrEnum

_SCORE = re.compile(r"score [0-9.]+ > ")


class Outcome(StrEnum):
    SCREENED = "screened"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    OUT_OF_SCOPE = "out_of_scope"


def reason_kind(reason: str) -> str:
    """A reason as summaries count it: the image gate's per-file score left out, so that
    ``unlike the films this model knows: score 1.24 > 1.00`` and ``... score 1.35 > 1.00`` are
    counted as one kind (``... score > 1.00``). Audit rows keep the full reason."""
    return _SCORE.sub("score > ", reason)
