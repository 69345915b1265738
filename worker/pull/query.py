"""C-FIND, study -> series -> image: the instances a PACS holds that a pull should retrieve.

One association for the whole query. The studies of the period (or of each accession number),
then each study's series, keeping those of the wanted modalities (other modalities are never
asked about again, and never retrieved), then each kept series' instances. An answer that does
not check (``identifiers.py``) is left out and counted, with one log line per level; a Failure
or Cancel status stops the query with ``PacsError``; no answer in time, ``PacsUnavailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from worker.config import PullSource
from worker.errors import MalformedIdentifier
from worker.pull import identifiers
from worker.pull.association import CANCEL, FAILURE, PENDING, answers, associated, refused, where
from worker.pull.identifiers import Instance, Series, Study
from worker.pull.period import Period

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Found:
    """What a query found: the instances to retrieve, and how many answers were left out."""

    instances: list[Instance] = field(default_factory=list)
    studies: int = 0
    series: int = 0
    other_series: int = 0  # series of other modalities, left alone
    malformed: int = 0


def find_model(source: PullSource) -> str:
    if source.query_model == "patient":
        return PatientRootQueryRetrieveInformationModelFind
    return StudyRootQueryRetrieveInformationModelFind


def find(source: PullSource, period: Period | None, accessions: Sequence[str] = ()) -> Found:
    """The instances of ``source`` to retrieve: of ``period`` (None: any date, for accession
    numbers), of ``accessions`` when given, and of the source's modalities."""
    model = find_model(source)
    patient_root = source.query_model == "patient"
    found = Found()
    with associated(source, [(model, None)]) as assoc:

        def ask(query: Dataset, what: str, read: Callable[[Dataset | None], T]) -> Iterator[T]:
            for answer in _matches(assoc, source, query, model, what):
                try:
                    yield read(answer)
                except MalformedIdentifier as exc:
                    found.malformed += 1
                    if found.malformed == 1:
                        log.warning("%s: an answer left out: %s", where(source), exc)

        studies: dict[str, Study] = {}
        for accession in accessions or [None]:
            query = identifiers.study_query(
                period=period, modalities=source.modalities, accession=accession, patient_root=patient_root
            )
            for study in ask(
                query, "C-FIND of studies", lambda a: identifiers.read_study(a, patient_root=patient_root)
            ):
                studies.setdefault(study.study_uid, study)
        found.studies = len(studies)
        wanted: list[Series] = []
        for study in studies.values():
            query = identifiers.series_query(study)
            for series in ask(query, "C-FIND of series", lambda a, s=study: identifiers.read_series(a, s)):
                found.series += 1
                if series.modality in source.modalities:
                    wanted.append(series)
                else:
                    found.other_series += 1
        seen: set[str] = set()
        for series in wanted:
            query = identifiers.image_query(series)
            for instance in ask(
                query, "C-FIND of instances", lambda a, s=series: identifiers.read_instance(a, s)
            ):
                if instance.sop_instance_uid not in seen:
                    seen.add(instance.sop_instance_uid)
                    found.instances.append(instance)
    if found.malformed:
        log.warning("%s: %d answers left out, malformed", where(source), found.malformed)
    return found


def _matches(
    assoc: Any, source: PullSource, query: Dataset, model: str, what: str
) -> Iterator[Dataset | None]:
    """The identifiers of a C-FIND's pending answers; ``PacsError`` for a Failure or Cancel."""
    for answer in answers(assoc, assoc.send_c_find(query, model), source=source, what=what):
        if answer.category == PENDING:
            yield answer.identifier
        elif answer.category in (FAILURE, CANCEL):
            raise refused(source, what, answer)
