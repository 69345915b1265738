"""The DICOM objects a screening result becomes, for a PACS: a structured report and a key image.

Pure functions: a source header and the screening facts in, a pydicom ``Dataset`` out; no
files, no network, no clock. Sending them is the outbox's business.

- ``build_report``: a Comprehensive SR in the source's study (its own series) that follows
  TID 1500 (Imaging Measurement Report): one measurement group with the finding
  "Pneumonia" (SCT 233604007) present or absent, P(pneumonia) and the threshold as numbers,
  the model (name, version, SHA-256, site profile) as TID 4019 algorithm identification, the
  source image as the group's evidence, and a comment that it is not a diagnosis. The tree
  and its codes are in docs/pacs-objects.md.
- ``build_key_image``: for a positive, a Secondary Capture of the caller's overlay (the
  Grad-CAM heatmap), marked NOT FOR DIAGNOSIS, pointing at the source instance.
- ``to_bytes`` / ``from_bytes``: a Part 10 file (with its meta header), explicit VR little
  endian, and back.

Every UID is derived from the source, the model and the kind of object (``worker.pacs.uids``)
and every date and time from the ``created`` argument, so the same inputs give the same bytes.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from typing import Protocol

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian
from pydicom.valuerep import DA, DT, TM

from worker.pacs import uids

MANUFACTURER = "xray-screen"
REPORT = "sr"
KEY_IMAGE = "sc"
REPORT_SERIES_NUMBER = 9101
KEY_IMAGE_SERIES_NUMBER = 9102

NOT_A_DIAGNOSIS = (
    "NOT A DIAGNOSIS. Automated pneumonia screening by a machine-learning model, to help "
    "prioritise reading; it does not replace a radiologist's report."
)
REPORT_SERIES_DESCRIPTION = "AI pneumonia screen - NOT A DIAGNOSIS"
KEY_IMAGE_SERIES_DESCRIPTION = "AI pneumonia heatmap - NOT FOR DIAGNOSIS"

# Codes (docs/pacs-objects.md). SNOMED CT from its release, the rest from pydicom's tables.
PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
PLAIN_CHEST_XRAY = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
PRESENT = codes.SCT.Present  # 52101004
ABSENT = codes.SCT.Absent  # 272519000
PROBABILITY = codes.DCM.Probability  # 122157
THRESHOLD = codes.DCM.ThresholdValue  # 122411
NO_UNITS = codes.UCUM.NoUnits  # "1"
COMMENT = codes.DCM.Comment  # 121106
SOURCE_IMAGE_PURPOSE = hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")

# Patient and General Study attributes every object carries, empty when the source has none
# (Type 2): highdicom reads them from the source, and some films (old ACR-NEMA headers) lack them.
_TYPE2_IDENTITY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_AGE = re.compile(r"\d{3}[DWMY]")  # the AS value representation
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class ResultLike(Protocol):
    """What ``Screening.from_result`` reads: ``worker.db.store.ResultRecord`` has it all."""

    label: str
    positive_class: str
    positive_probability: float
    threshold: float | None
    model_name: str
    model_version: str
    model_sha256: str
    site_profile: str | None


@dataclass(frozen=True)
class Screening:
    """The facts of one result that go into the objects."""

    positive: bool
    probability: float  # P(positive class)
    threshold: float | None  # None: the label is the most probable class
    model_name: str
    model_version: str
    model_sha256: str
    site_profile: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability {self.probability} is not in [0, 1]")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} is not in [0, 1]")
        if len(self.model_sha256) != 64:
            raise ValueError(f"model_sha256 {self.model_sha256!r} is not a SHA-256 in hex")

    @classmethod
    def from_result(cls, result: ResultLike) -> Screening:
        return cls(
            positive=result.label == result.positive_class,
            probability=result.positive_probability,
            threshold=result.threshold,
            model_name=result.model_name,
            model_version=result.model_version,
            model_sha256=result.model_sha256,
            site_profile=result.site_profile,
        )


@dataclass(frozen=True)
class Reference:
    """An instance elsewhere: the SR a new result replaces (Predecessor Documents Sequence)."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str

    @classmethod
    def report(cls, source: Dataset, model_sha256: str) -> Reference:
        """The SR that ``model_sha256`` made (or would make) from ``source``."""
        return cls(
            sop_class_uid=ComprehensiveSRStorage,
            sop_instance_uid=uids.instance_uid(source.SOPInstanceUID, model_sha256, REPORT),
            series_instance_uid=uids.series_uid(source.StudyInstanceUID, model_sha256, REPORT),
            study_instance_uid=source.StudyInstanceUID,
        )


def build_report(
    source: Dataset, screening: Screening, created: datetime, replaces: Reference | None = None
) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR of one screening of ``source`` (a header is enough)."""
    header = _identity(source)
    sha = screening.model_sha256
    algorithm = hd.sr.AlgorithmIdentification(
        name=screening.model_name,
        version=screening.model_version,
        parameters=_parameters(screening),
        manufacturer=MANUFACTURER,
    )
    measurements = [hd.sr.Measurement(name=PROBABILITY, value=screening.probability, unit=NO_UNITS)]
    if screening.threshold is not None:
        measurements.append(hd.sr.Measurement(name=THRESHOLD, value=screening.threshold, unit=NO_UNITS))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(header.SOPInstanceUID, sha), identifier="Pneumonia screening"
        ),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=PNEUMONIA, value=PRESENT if screening.positive else ABSENT)
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(header)],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device_uid(sha),
            name=screening.model_name,
            manufacturer_name=MANUFACTURER,
            model_name=screening.model_version,
        ),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PLAIN_CHEST_XRAY,
        imaging_measurements=[group],
    )
    root = content[0]
    root.ContentSequence.append(hd.sr.TextContentItem(COMMENT, NOT_A_DIAGNOSIS, "CONTAINS"))
    previous = [_as_instance(replaces)] if replaces is not None else None
    with _source_names_as_they_are():
        sr = hd.sr.ComprehensiveSR(
            evidence=[header],
            content=root,
            series_instance_uid=uids.series_uid(header.StudyInstanceUID, sha, REPORT),
            series_number=REPORT_SERIES_NUMBER,
            sop_instance_uid=uids.instance_uid(header.SOPInstanceUID, sha, REPORT),
            instance_number=_instance_number(header),
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,
            previous_versions=previous,
            series_description=REPORT_SERIES_DESCRIPTION,
            manufacturer_model_name=_lo(screening.model_name),
            software_versions=_lo(screening.model_version),
            **_dates(created),
        )
    _fix_clock(sr, created)
    return sr


def build_key_image(
    source: Dataset, overlay: np.ndarray, screening: Screening, created: datetime
) -> hd.sc.SCImage:
    """A Secondary Capture of ``overlay`` (uint8, rows x columns x 3, RGB), for a positive.

    Any text burned into the overlay is the caller's; this marks the object itself NOT FOR
    DIAGNOSIS (series description, image comments, derivation description).
    """
    if not screening.positive:
        raise ValueError("a key image is made for a positive result only")
    if overlay.dtype != np.uint8 or overlay.ndim != 3 or overlay.shape[2] != 3:
        raise ValueError(f"overlay must be uint8 rows x columns x 3, not {overlay.dtype} {overlay.shape}")
    header = _identity(source)
    sha = screening.model_sha256
    with _source_names_as_they_are():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=header,
            pixel_array=np.ascontiguousarray(overlay),
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=uids.series_uid(header.StudyInstanceUID, sha, KEY_IMAGE),
            series_number=KEY_IMAGE_SERIES_NUMBER,
            sop_instance_uid=uids.instance_uid(header.SOPInstanceUID, sha, KEY_IMAGE),
            instance_number=_instance_number(header),
            manufacturer=MANUFACTURER,
            # highdicom wants an orientation; the source's own (often empty) replaces it below.
            patient_orientation=("L", "F"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=KEY_IMAGE_SERIES_DESCRIPTION,
            manufacturer_model_name=_lo(screening.model_name),
            software_versions=_lo(screening.model_version),
            **_dates(created),
        )
    sc.copy_patient_and_study_information(header)
    sc.PatientOrientation = header.get("PatientOrientation", "")
    _copy_laterality(sc, header)
    sc.BurnedInAnnotation = "YES"
    sc.LossyImageCompression = "00"
    summary = (
        f"AI heatmap: P(pneumonia) {screening.probability:.3f}, model {screening.model_name} "
        f"{screening.model_version}"
    )
    sc.ImageComments = f"NOT FOR DIAGNOSIS. {summary}. {NOT_A_DIAGNOSIS}"
    sc.DerivationDescription = f"NOT FOR DIAGNOSIS. {summary}, over the source image."
    reference = Dataset()
    reference.ReferencedSOPClassUID = header.SOPClassUID
    reference.ReferencedSOPInstanceUID = header.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [SOURCE_IMAGE_PURPOSE]
    sc.SourceImageSequence = [reference]
    _fix_clock(sc, created)
    sc.DateOfSecondaryCapture = sc.InstanceCreationDate
    sc.TimeOfSecondaryCapture = sc.InstanceCreationTime
    return sc


def to_bytes(dataset: Dataset) -> bytes:
    """``dataset`` as a Part 10 file: preamble, meta header, explicit VR little endian."""
    meta = dataset.file_meta
    if meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        raise ValueError(f"expected explicit VR little endian, not {meta.TransferSyntaxUID}")
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def from_bytes(data: bytes) -> Dataset:
    """A Part 10 file's dataset (meta header in ``file_meta``)."""
    return pydicom.dcmread(BytesIO(data))


def _identity(source: Dataset) -> Dataset:
    """The source's header as the objects read it: every attribute, no pixels, Type 2 filled."""
    missing = [k for k in _REQUIRED_UIDS if not source.get(k)]
    if missing:
        raise ValueError(f"the source has no {', '.join(missing)}")
    header = Dataset()
    for element in source:
        if element.tag.group != 0x7FE0 and element.tag.element != 0:  # no pixels, no group lengths
            header.add(element)
    header = copy.deepcopy(header)  # the objects share no element with the caller's dataset
    for keyword in _TYPE2_IDENTITY:
        if keyword not in header:
            setattr(header, keyword, "")
    if not _AGE.fullmatch(str(header.get("PatientAge", "000Y"))):
        del header.PatientAge  # e.g. "51": the unit is a guess, and the attribute is Type 3
    return header


def _copy_laterality(sc: Dataset, header: Dataset) -> None:
    """The source's body part, and its laterality where the source has one (Type 2C).

    Laterality is required, empty if unknown, for a paired body part; a chest is not one, and
    a validator knows that from Body Part Examined.
    """
    if header.get("BodyPartExamined"):
        sc.BodyPartExamined = header.BodyPartExamined
    if "Laterality" in header:
        sc.Laterality = header.Laterality
    elif not header.get("BodyPartExamined"):
        sc.Laterality = ""


@contextmanager
def _source_names_as_they_are() -> Iterator[None]:
    """highdicom warns of one-component person names; they are the source's, copied as they are."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        yield


def _parameters(screening: Screening) -> list[str]:
    decision = (
        f"decision threshold {screening.threshold:g} on P(pneumonia)"
        if screening.threshold is not None
        else "decision: the most probable class"
    )
    parameters = [f"model SHA-256 {screening.model_sha256}", decision]
    if screening.site_profile:
        parameters.append(f"site profile {screening.site_profile}")
    return parameters


def _as_instance(reference: Reference) -> Dataset:
    instance = Dataset()
    instance.SOPClassUID = reference.sop_class_uid
    instance.SOPInstanceUID = reference.sop_instance_uid
    instance.SeriesInstanceUID = reference.series_instance_uid
    instance.StudyInstanceUID = reference.study_instance_uid
    return instance


def _instance_number(header: Dataset) -> int:
    """The source's instance number, so a study's objects sort like its films."""
    try:
        number = int(header.get("InstanceNumber") or 1)
    except ValueError:
        return 1
    return number if number >= 1 else 1


def _dates(created: datetime) -> dict[str, object]:
    local = _wall_clock(created)
    return {
        "content_date": local.date(),
        "content_time": local.time(),
        "series_date": local.date(),
        "series_time": local.time(),
    }


def _fix_clock(dataset: Dataset, created: datetime) -> None:
    """Replace the times highdicom takes from the clock with ``created``."""
    local = _wall_clock(created)
    dataset.InstanceCreationDate = DA(local.date())
    dataset.InstanceCreationTime = TM(local.time())
    for item in dataset.get("ContributingEquipmentSequence", []):
        if item.get("ManufacturerModelName") == "highdicom":
            item.ContributionDateTime = DT(local)


def _wall_clock(created: datetime) -> datetime:
    """DICOM dates are the site's wall clock: an aware time is converted to this host's zone."""
    return created.astimezone().replace(tzinfo=None) if created.tzinfo else created


def _lo(text: str) -> str:
    """A value for an LO element: at most 64 characters."""
    return text[:64]


__all__ = [
    "Reference",
    "Screening",
    "build_key_image",
    "build_report",
    "from_bytes",
    "to_bytes",
]
