"""The heatmap stage: after screening, a Grad-CAM overlay for each film that wants one.

It takes the predictor's answers as they come and hands each one on with the path of its
heatmap (None: it wants none). Maps need gradients, which the predictor's
``inference_mode`` pass does not keep, so they are a second pass over the films that want one
(positive verdicts by default), batched: ``window`` films wanting a map share one forward
and backward pass. An answer is held back only while a map before it is pending, so a run of
films that want none passes straight through, and order is kept.

The item a map is computed from is rebuilt from the decoded film with the learner's own item
transforms (``LoadedModel.to_item``): the same function, the same pixels as the screening. The
overlay shows the film as a person reads it: a JPEG the decoder read at reduced size for the
model (``min_side``) is decoded again at up to ``max_side``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.answers import Answer, Prediction
from worker.decode import DecodedImage, decode_file
from worker.errors import TransientError, XrayScreenError
from worker.explain.overlay import CAPTION, NO_REGION, render, write_png
from worker.explain.settings import ExplainSettings, heatmap_path
from worker.pipeline.hashing import sha256_file

if TYPE_CHECKING:  # torch and fastai only where maps are made: ``annotate`` is plain Python
    import torch

    from worker.model.learner import LoadedModel

log = logging.getLogger(__name__)


class Heatmapper:
    """Writes the heatmaps of the screened films ``settings`` asks for, under its folder."""

    def __init__(
        self,
        model: LoadedModel,
        settings: ExplainSettings,
        *,
        device: torch.device | str = "cpu",
        today: Callable[[], date] = date.today,
    ):
        self.model = model
        self.settings = settings
        self.today = today
        from worker.explain.gradcam import GradCam

        self.gradcam = GradCam.of(model, device=device)

    def wants(self, answer: Answer) -> bool:
        """A screened film (a ``Prediction``) whose verdict ``[explain] heatmaps`` names."""
        return isinstance(answer, Prediction) and self.settings.wants(answer.label, self.model.positive_class)

    def write(self, predictions: Sequence[Prediction]) -> list[Path]:
        """One heatmap per prediction, computed in one batch; their paths, in order.

        ``TransientError`` when one cannot be written (the folder's disk or share): not the
        film's fault.
        """
        if not predictions:
            return []
        maps = self.gradcam([self.model.to_item(p.decoded) for p in predictions])
        day, method = self.today(), self.model.preprocessing.resize_method
        paths = []
        for p, heat, peak in zip(predictions, maps.maps, maps.peaks, strict=True):
            text = CAPTION if peak > 0 else f"{CAPTION} ({NO_REGION})"
            film = self.film(p.path, p.decoded)
            image = render(film, heat, resize_method=method, max_side=self.settings.max_side, text=text)
            dest = heatmap_path(self.settings.folder, sha256_file(p.path)[0], day)
            try:
                paths.append(write_png(image, dest))
            except OSError as exc:
                raise TransientError(f"cannot write heatmap {dest}: {exc.strerror or exc}") from exc
        return paths

    def film(self, path: Path, decoded: DecodedImage) -> np.ndarray:
        """The film's grey pixels for the overlay: the screening's decoded pixels, or, when a
        JPEG was decoded at reduced size for the model, decoded again large enough to fill
        ``max_side`` (the overlay is read by a person, not by the model)."""
        want = min(self.settings.max_side, max(decoded.width, decoded.height))
        if max(decoded.pixels.shape) >= want:
            return decoded.pixels
        try:
            return decode_file(path, min_side=self.settings.max_side).pixels
        except XrayScreenError:  # changed or gone since it was screened: the pixels we have
            return decoded.pixels

    def write_or_skip(self, predictions: Sequence[Prediction]) -> list[Path | None]:
        """``write``, but a failure of our own (not ``TransientError``) costs the maps, not the
        films: it is logged with its traceback, and these films go on without a heatmap."""
        try:
            return list(self.write(predictions))
        except TransientError:
            raise
        except Exception as exc:
            log.error(
                "internal error computing %d heatmaps (%s: %s); their films go on without one",
                len(predictions),
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            return [None] * len(predictions)

    def annotate(self, answers: Iterable[Answer], window: int = 16) -> Iterator[tuple[Answer, Path | None]]:
        """Each answer with its heatmap's path (None: it wants none, or it failed), in input order."""
        return annotate(answers, self.wants, self.write_or_skip, window)


def annotate(
    answers: Iterable[Any],
    wants: Callable[[Any], bool],
    write: Callable[[list[Any]], Sequence[Path | None]],
    window: int,
) -> Iterator[tuple[Any, Path | None]]:
    """Pairs each answer with ``write``'s path for it (None where ``wants`` says no), in input
    order. An answer is held back only from the first pending map on, and at most ``window``
    answers are held: then the maps of those that want one are written in one call."""
    held: list[Any] = []

    def flush() -> Iterator[tuple[Any, Path | None]]:
        paths = iter(write([a for a in held if wants(a)]))
        for answer in held:
            yield answer, (next(paths) if wants(answer) else None)
        held.clear()

    for answer in answers:
        if not held and not wants(answer):
            yield answer, None
            continue
        held.append(answer)
        if len(held) >= max(1, window):
            yield from flush()
    if held:
        yield from flush()
