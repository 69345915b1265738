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

UNLIKE = "unlike the films this model was trained on"
_DISTANCE = re.compile(r"distance [0-9.]+ from them, over ")
# Written before the reason had words (audit rows keep it): counted as the same kind.
_EARLIER = re.compile(r"^unlike the films this model knows: score [0-9.]+ > ")


class Outcome(StrEnum):
    SCREENED = "screened"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    OUT_OF_SCOPE = "out_of_scope"


def unlike_reason(score: float, limit: float) -> str:
    """The image gate's reason for refusing an image: its distance from the training films (the
    gate's score, ``worker/model/gate.py``) and the limit that distance went over."""
    return f"{UNLIKE}: distance {score:.2f} from them, over the limit {limit:.2f}"


def reason_kind(reason: str) -> str:
    """A reason as summaries count it: the image gate's per-file distance left out, so that
    ``... distance 1.24 from them, over the limit 1.00`` and ``... distance 1.35 from them, ...``
    are counted as one kind (``unlike the films this model was trained on: distance over the
    limit 1.00``), and so is the earlier wording (``unlike the films this model knows: score 1.24
    > 1.00``). Audit rows keep the full reason."""
    return _DISTANCE.sub("distance over ", _EARLIER.sub(f"{UNLIKE}: distance over the limit ", reason))
