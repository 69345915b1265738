"""One screening result as a FHIR transaction Bundle for the EHR (issue 28).

A pure function, like ``worker.ris.oru``: the source's DICOM header and the screening facts
in, the Bundle (JSON, as a dict) out. Built and validated with fhir.resources, R4B models
(R4B changed nothing in these four resources from R4). The mapping (docs/hl7-fhir.md):

- **Device**: the model: its SHA-256 as identifier, name, version, manufacturer xray-screen.
- **Observation**: P(pneumonia) (SNOMED CT 233604007) as a quantity of unit 1, the threshold
  as a component, interpretation POS or NEG, the Device as its device, "not a diagnosis" as
  a note; status preliminary.
- **DiagnosticReport**: LOINC 36554-4 (XR Chest Single view: a result is one film), category
  RAD, status preliminary, the Observation as its result, the study by Study Instance UID
  (``imagingStudy``: a reference by identifier, ``urn:dicom:uid``), a conclusion in words and,
  for a positive, the conclusion code Pneumonia; the worklist priority as a ``meta.tag``.
- The subject: the patient by identifier (PatientID, with IssuerOfPatientID as its system
  when the header has one), not by a server id we cannot know.

Every resource has an identifier derived from (source instance, model), and each entry is a
conditional create (``ifNoneExist``) on it: a resend makes no second report. ``fullUrl``s are
``urn:uuid:``s derived the same way, so the same inputs give the same Bundle.

fhir.resources is imported lazily (``bundle_model``): the lean install has no FHIR, and a
FHIR destination configured without the ``ehr`` extra is refused with what to install.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset

from worker.errors import ConfigError
from worker.pacs.objects import NOT_A_DIAGNOSIS, Screening

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DICOM_UID = "urn:dicom:uid"
RESULT_SYSTEM = "urn:xray-screen:result"  # our identifiers: <SOP Instance UID>/<model SHA-256>
MODEL_SYSTEM = "urn:xray-screen:model-sha256"
PRIORITY_SYSTEM = "urn:xray-screen:priority"
LOCAL_SYSTEM = "urn:xray-screen:code"
PRIORITIES = ("urgent", "routine")
NAMESPACE = uuid.UUID("2f0c5b8e-7a51-4f2e-9a57-9d0a3c6f1e21")  # our fullUrls' UUID namespace


def bundle_model() -> Any:
    """fhir.resources' R4B ``Bundle``, imported only here and only when a Bundle is built: it is
    the ``ehr`` extra, not in the lean install. ``ConfigError`` saying what to install."""
    try:
        from fhir.resources.R4B.bundle import Bundle
    except ImportError:
        raise ConfigError(
            "[[fhir.destinations]] needs fhir.resources, which this install lacks: "
            "pip install 'xray-screen[lean,ehr]'"
        ) from None
    return Bundle


def build_bundle(
    source: Dataset, screening: Screening, created: datetime, *, priority: str
) -> dict[str, Any]:
    """The transaction Bundle of one screening of ``source`` (a header is enough), validated."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority {priority!r}: expected one of {', '.join(PRIORITIES)}")
    sop, study = str(source.SOPInstanceUID), str(source.StudyInstanceUID)
    key = f"{sop}/{screening.model_sha256}"
    when = (created if created.tzinfo else created.replace(tzinfo=UTC)).isoformat()
    device_url, observation_url, report_url = (
        _urn(kind, key) for kind in ("device", "observation", "report")
    )
    subject = _subject(source)
    device = {
        "resourceType": "Device",
        "identifier": [{"system": MODEL_SYSTEM, "value": screening.model_sha256}],
        "manufacturer": "xray-screen",
        "deviceName": [{"name": screening.model_name, "type": "model-name"}],
        "version": [{"value": screening.model_version}],
    }
    components = []
    if screening.threshold is not None:
        components.append(
            {
                "code": {
                    "coding": [
                        {"system": LOCAL_SYSTEM, "code": "threshold", "display": "Operating threshold"}
                    ]
                },
                "valueQuantity": _ratio(screening.threshold),
            }
        )
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": RESULT_SYSTEM, "value": f"{key}/probability"}],
        "status": "preliminary",
        "category": [
            _coded("http://terminology.hl7.org/CodeSystem/observation-category", "imaging", "Imaging")
        ],
        "code": {**_coded(SNOMED, "233604007", "Pneumonia"), "text": "P(pneumonia), screening model"},
        "subject": subject,
        "effectiveDateTime": when,
        "valueQuantity": _ratio(screening.probability),
        "interpretation": [
            _coded(
                "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                *(("POS", "Positive") if screening.positive else ("NEG", "Negative")),
            )
        ],
        "device": {"reference": device_url},
        "note": [{"text": NOT_A_DIAGNOSIS}],
    }
    if components:
        observation["component"] = components
    if screening.site_profile:
        observation["method"] = {"text": f"site profile {screening.site_profile}"}
    finding = "present" if screening.positive else "not found"
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "meta": {"tag": [{"system": PRIORITY_SYSTEM, "code": priority}]},
        "identifier": [{"system": RESULT_SYSTEM, "value": key}],
        "status": "preliminary",
        "category": [_coded("http://terminology.hl7.org/CodeSystem/v2-0074", "RAD", "Radiology")],
        "code": _coded(LOINC, "36554-4", "XR Chest Single view"),
        "subject": subject,
        "effectiveDateTime": _study_time(source) or when,
        "issued": when,
        "result": [{"reference": observation_url}],
        "imagingStudy": [
            {"type": "ImagingStudy", "identifier": {"system": DICOM_UID, "value": f"urn:oid:{study}"}}
        ],
        "conclusion": (
            f"Pneumonia {finding} by the screening model {screening.model_name} {screening.model_version} "
            f"(P = {screening.probability:.4f}"
            + (f", threshold {screening.threshold:.4f}" if screening.threshold is not None else "")
            + f"). {NOT_A_DIAGNOSIS}"
        ),
    }
    if screening.positive:
        report["conclusionCode"] = [_coded(SNOMED, "233604007", "Pneumonia")]
    entries = [
        (device_url, device, f"identifier={MODEL_SYSTEM}|{screening.model_sha256}"),
        (observation_url, observation, f"identifier={RESULT_SYSTEM}|{key}/probability"),
        (report_url, report, f"identifier={RESULT_SYSTEM}|{key}"),
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": url,
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"], "ifNoneExist": condition},
            }
            for url, resource, condition in entries
        ],
    }
    return bundle_model().model_validate(bundle).model_dump(mode="json", exclude_none=True)  # type: ignore[no-any-return]


def _urn(kind: str, key: str) -> str:
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, f'{kind}:{key}')}"


def _coded(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def _ratio(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 6), "unit": "1", "system": UCUM, "code": "1"}


def _subject(source: Dataset) -> dict[str, Any]:
    """The patient by identifier (and name, for people), as the header has them."""
    identifier: dict[str, Any] = {"value": str(source.get("PatientID", "") or "unknown")}
    issuer = str(source.get("IssuerOfPatientID", "") or "")
    if issuer:
        identifier["system"] = f"urn:xray-screen:issuer:{issuer}"
    subject: dict[str, Any] = {"type": "Patient", "identifier": identifier}
    name = source.get("PatientName")
    if name:
        subject["display"] = str(name).replace("^", " ").strip()
    return subject


def _study_time(source: Dataset) -> str:
    """The study's date as a FHIR dateTime, when the header has a valid one (its time is the
    site's wall clock without an offset, which a FHIR dateTime with a time must carry)."""
    day = str(source.get("StudyDate", "") or "")
    if len(day) != 8 or not day.isdigit():
        return ""
    return f"{day[:4]}-{day[4:6]}-{day[6:]}"
