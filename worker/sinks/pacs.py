"""The PACS sink: what a screened DICOM's result becomes for the PACS, queued with the result.

``PacsOutputs`` is the ``Committer``'s ``outputs`` hook (``worker/pipeline/commit.py``). For
each screened item it returns the outbox rows to write in the transaction that stores its
result (``Store.record_batch(..., outbox=...)``), so a result is never committed without its
objects, and ``xray-worker send`` delivers them on its own schedule:

- a DICOM input only: a PNG or JPEG has no study to put a report in, and none is invented;
- the structured report (``worker.pacs.objects.build_report``), for every destination whose
  ``outputs`` has ``sr``;
- for a positive, the key image (``build_key_image``) for every destination whose ``outputs``
  has ``sc``: the film's heatmap overlay when ``[explain]`` wrote one, else the film itself
  with ``AI: PNEUMONIA flagged - NOT FOR DIAGNOSIS`` burned into a band below it.

The source's header is read here, before the commit, while the file is still where the
pipeline has it (the inbox's work area, or the archive): after the commit the filer moves it.
A duplicate makes no result, so it queues nothing again; UIDs derive from (source, model,
kind), so an object queued twice is one row. A new model's report on a film an older model
already reported on names that report as its predecessor (``objects.Reference``), so a PACS
can show the newer one in its place. A file whose objects cannot be built (a header without
its UIDs, an error of ours) is logged and gets its result without them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from worker.config import PacsDestination
from worker.db.outbox import OutboxItem
from worker.db.store import ResultRecord
from worker.errors import TransientError
from worker.explain.overlay import caption, fit
from worker.pacs.objects import (
    KEY_IMAGE,
    REPORT,
    Reference,
    Screening,
    build_key_image,
    build_report,
    to_bytes,
)

log = logging.getLogger(__name__)
DICOM = "DICOM"  # ``DecodedImage.format`` of a DICOM input


def flagged_caption(positive_class: str) -> str:
    """The text burned into a key image that has no heatmap."""
    return f"AI: {positive_class} flagged - NOT FOR DIAGNOSIS"


def read_header(path: Path) -> Dataset:
    """A DICOM file's header, without its pixels. ``TransientError`` when it cannot be read just
    now (the share): the item was screened from this file a moment ago."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except OSError as exc:
        raise TransientError(f"cannot read the header of {path}: {exc.strerror or exc}") from exc


def contained(
    screened: Sequence[tuple[Any, ResultRecord]],
    build: Callable[[Any, ResultRecord], list[OutboxItem]],
    what: str,
) -> list[OutboxItem]:
    """``build``'s rows for each screened item; one it fails on (an error of ours, not a
    ``TransientError``) is logged and keeps its result without ``what``."""
    rows: list[OutboxItem] = []
    for item, result in screened:
        try:
            rows += build(item, result)
        except TransientError:
            raise
        except Exception as exc:
            log.error(
                "%s: its %s cannot be built (%s: %s); its result is recorded without them",
                item.name,
                what,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
    return rows


class PacsOutputs:
    """The outbox rows of a batch's screened results, for ``destinations``.

    ``max_side``: the long side, at most, of a key image made from the film itself (the
    heatmap overlay has its own, ``[explain] max_side``).
    """

    def __init__(
        self,
        destinations: Sequence[PacsDestination],
        *,
        max_side: int = 1024,
        header: Callable[[Path], Dataset] = read_header,
        reported: Callable[[Sequence[str], str], dict[str, str]] | None = None,
    ):
        self.reports_to = [d.name for d in destinations if REPORT in d.outputs]
        self.key_images_to = [d.name for d in destinations if KEY_IMAGE in d.outputs]
        self.max_side = max_side
        self.header = header
        # content SHA-256s, model SHA-256 -> {content: the other model that reported on it}
        # (``Store.reported_by_other_models``); None: no report is replaced.
        self.reported = reported

    def __bool__(self) -> bool:
        return bool(self.reports_to or self.key_images_to)

    def __call__(self, screened: Sequence[tuple[Any, ResultRecord]]) -> list[OutboxItem]:
        """The outbox rows of a batch's screened items (``(item, result)`` pairs)."""
        wanted = [(item, result) for item, result in screened if self.wants(result)]
        if not wanted:
            return []
        replaced: dict[str, str] = {}
        if self.reported is not None:
            model = wanted[0][1].model_sha256
            replaced = self.reported([result.content_sha256 for _, result in wanted], model)
        return contained(
            wanted,
            lambda item, result: self.objects(item, result, replaced.get(result.content_sha256)),
            "PACS objects",
        )

    def wants(self, result: ResultRecord) -> bool:
        """A DICOM input's result that some destination takes an object of."""
        positive = result.label == result.positive_class
        return result.image_format == DICOM and bool(self.reports_to or (positive and self.key_images_to))

    def objects(self, item: Any, result: ResultRecord, replaces_model: str | None = None) -> list[OutboxItem]:
        """One item's rows; ``replaces_model``: the model whose report on it this one replaces."""
        screening = Screening.from_result(result)
        key_images_to = self.key_images_to if screening.positive else []
        if not (self.reports_to or key_images_to):
            return []
        try:
            source = self.header(item.path)
        except (InvalidDicomError, ValueError) as exc:
            log.warning("%s: no PACS objects: its header cannot be read again (%s)", item.name, exc)
            return []
        missing = [
            k
            for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
            if not source.get(k)
        ]
        if missing:
            log.warning("%s: no PACS objects: the file has no %s", item.name, ", ".join(missing))
            return []
        created = result.finished_at
        key = (result.model_sha256, result.content_sha256)
        rows: list[OutboxItem] = []
        if self.reports_to:
            replaces = Reference.report(source, replaces_model) if replaces_model else None
            report = build_report(source, screening, created, replaces=replaces)
            rows += _rows(report, REPORT, self.reports_to, key)
        if key_images_to:
            overlay = self.key_image_pixels(item, result.positive_class)
            rows += _rows(build_key_image(source, overlay, screening, created), KEY_IMAGE, key_images_to, key)
        return rows

    def key_image_pixels(self, item: Any, positive_class: str) -> np.ndarray:
        """The heatmap overlay (RGB) when one was written, else the captioned film."""
        if item.heatmap_path is not None:
            try:
                with Image.open(item.heatmap_path) as image:
                    return np.asarray(image.convert("RGB"))
            except OSError as exc:
                log.warning(
                    "%s: heatmap %s unreadable (%s): the key image is the film",
                    item.name,
                    item.heatmap_path,
                    exc,
                )
        grey = fit(item.prediction.decoded.pixels, self.max_side)
        return caption(np.repeat(grey[..., None], 3, axis=2), flagged_caption(positive_class))


def _rows(dataset: Dataset, kind: str, destinations: Sequence[str], key: tuple[str, str]) -> list[OutboxItem]:
    payload = to_bytes(dataset)
    return [
        OutboxItem(
            destination=name,
            kind=kind,
            sop_class_uid=str(dataset.SOPClassUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            study_instance_uid=str(dataset.StudyInstanceUID),
            payload=payload,
            result_key=key,
        )
        for name in destinations
    ]
