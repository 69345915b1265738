"""The C-FIND identifiers a pull sends, and the answers it accepts.

Three levels, each asking for the keys the next one needs: the studies of a period (and of
the modalities, where the PACS matches ``ModalitiesInStudy``), their series, the instances of
the series whose modality is wanted. Every answer is checked before it is used: a UID must be
a UID (digits and dots, 64 at most: the rule that names a file in the inbox,
``worker/receive/store.py``), a modality a code string, the level the one asked. A bad answer
raises ``MalformedIdentifier`` naming the level and the key, never the value: it may be
patient data.

A Patient Root source needs the Patient ID in every query below the study and in the
retrieve; it is kept for that (in memory, and in the pull table), and never logged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from worker.errors import MalformedIdentifier, UsageError
from worker.malformed import MALFORMED
from worker.pull.period import Period
from worker.receive.store import Refused, file_name

STUDY, SERIES, IMAGE = "STUDY", "SERIES", "IMAGE"
# CS: upper case letters, digits, space and underscore, 16 at most.
_CODE = re.compile(r"[A-Z0-9_ ]{0,16}")
# SH (Accession Number) and LO (Patient ID): no backslash (it separates values), no control character.
_TEXT = re.compile(r"[^\\\x00-\x1f\x7f]*")


@dataclass(frozen=True)
class Study:
    study_uid: str
    patient_id: str | None = None  # a Patient Root source's; never logged


@dataclass(frozen=True)
class Series:
    study: Study
    series_uid: str
    modality: str


@dataclass(frozen=True)
class Instance:
    """One instance the PACS holds that matches the query: what the pull table records."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str  # empty: the PACS did not say (many do not); the retrieve then proposes any
    modality: str
    patient_id: str | None = None


def _identifier(level: str, patient_id: str | None, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    if patient_id is not None:
        ds.PatientID = patient_id
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def study_query(
    *, period: Period | None, modalities: Sequence[str], accession: str | None, patient_root: bool
) -> Dataset:
    """STUDY level: the studies of ``period`` (any date when None) holding one of ``modalities``,
    or the one with ``accession``."""
    ds = _identifier(
        STUDY,
        "" if patient_root else None,
        StudyInstanceUID="",
        StudyDate=period.dicom_range() if period else "",
        AccessionNumber=accession or "",
    )
    ds.ModalitiesInStudy = list(modalities) if len(modalities) > 1 else modalities[0]
    return ds


def series_query(study: Study) -> Dataset:
    """SERIES level: the series of ``study``, with their modality."""
    return _identifier(
        SERIES, study.patient_id, StudyInstanceUID=study.study_uid, SeriesInstanceUID="", Modality=""
    )


def image_query(series: Series) -> Dataset:
    """IMAGE level: the instances of ``series``, with their SOP class."""
    return _identifier(
        IMAGE,
        series.study.patient_id,
        StudyInstanceUID=series.study.study_uid,
        SeriesInstanceUID=series.series_uid,
        SOPInstanceUID="",
        SOPClassUID="",
    )


def retrieve_identifier(instance: Instance) -> Dataset:
    """IMAGE level, one instance: what a C-GET or C-MOVE asks for."""
    return _identifier(
        IMAGE,
        instance.patient_id,
        StudyInstanceUID=instance.study_uid,
        SeriesInstanceUID=instance.series_uid,
        SOPInstanceUID=instance.sop_instance_uid,
    )


def read_study(answer: Dataset | None, *, patient_root: bool) -> Study:
    """A STUDY level answer; ``MalformedIdentifier``."""
    answer = _level(answer, STUDY)
    patient_id = _patient_id(answer, STUDY) if patient_root else None
    return Study(_uid(answer, "StudyInstanceUID", STUDY), patient_id)


def read_series(answer: Dataset | None, study: Study) -> Series:
    """A SERIES level answer about ``study``; ``MalformedIdentifier``."""
    answer = _level(answer, SERIES)
    _same(answer, "StudyInstanceUID", study.study_uid, SERIES)
    return Series(study, _uid(answer, "SeriesInstanceUID", SERIES), _code(answer, "Modality", SERIES))


def read_instance(answer: Dataset | None, series: Series) -> Instance:
    """An IMAGE level answer about ``series``; ``MalformedIdentifier``."""
    answer = _level(answer, IMAGE)
    _same(answer, "SeriesInstanceUID", series.series_uid, IMAGE)
    return Instance(
        study_uid=series.study.study_uid,
        series_uid=series.series_uid,
        sop_instance_uid=_uid(answer, "SOPInstanceUID", IMAGE),
        sop_class_uid=_uid(answer, "SOPClassUID", IMAGE) if _value(answer, "SOPClassUID", IMAGE) else "",
        modality=series.modality,
        patient_id=series.study.patient_id,
    )


def read_accessions(text: str, where: str) -> list[str]:
    """Accession numbers, one a line (blank lines and ``#`` comments ignored), each checked;
    ``UsageError`` naming the line of ``where`` (never the value)."""
    found: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        if len(value) > 16 or not _TEXT.fullmatch(value) or "*" in value or "?" in value:
            raise UsageError(
                f"{where}, line {number}: not an accession number (16 characters at most, no \\ * ?)"
            )
        if value not in found:
            found.append(value)
    return found


# -- checks -------------------------------------------------------------------------


def _value(answer: Dataset, keyword: str, level: str) -> str:
    try:
        value = answer.get(keyword)
        text = "" if value is None else str(value)
    except MALFORMED:
        raise MalformedIdentifier(f"{level} answer: {keyword} does not parse") from None
    return text.strip(" \0")


def _level(answer: Dataset | None, level: str) -> Dataset:
    if answer is None:
        raise MalformedIdentifier(f"{level} answer without an identifier")
    got = _value(answer, "QueryRetrieveLevel", level)
    if got and got != level:
        raise MalformedIdentifier(f"{level} answer: QueryRetrieveLevel is not {level}")
    return answer


def _uid(answer: Dataset, keyword: str, level: str) -> str:
    text = _value(answer, keyword, level)
    if not text:
        raise MalformedIdentifier(f"{level} answer: {keyword} is missing")
    try:
        return file_name(text)
    except Refused:
        raise MalformedIdentifier(
            f"{level} answer: {keyword} is not a UID (digits and dots, 64 at most)"
        ) from None


def _same(answer: Dataset, keyword: str, expected: str, level: str) -> None:
    got = _value(answer, keyword, level)
    if got and got != expected:
        raise MalformedIdentifier(f"{level} answer: {keyword} is not the one asked about")


def _code(answer: Dataset, keyword: str, level: str) -> str:
    text = _value(answer, keyword, level).upper()
    if not _CODE.fullmatch(text):
        raise MalformedIdentifier(f"{level} answer: {keyword} is not a code string")
    return text


def _patient_id(answer: Dataset, level: str) -> str:
    text = _value(answer, "PatientID", level)
    if not text or len(text) > 64 or not _TEXT.fullmatch(text):
        raise MalformedIdentifier(f"{level} answer: PatientID is missing or not a valid ID (Patient Root)")
    return text
