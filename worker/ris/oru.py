"""One screening result as an HL7 v2.5.1 ORU^R01 for the RIS and the EHR (issue 28).

A pure function, like ``worker.pacs.objects``: the source's DICOM header and the screening
facts in, the message text out; no files, no network, no clock. Delivering it over MLLP is
the outbox's business. The mapping (docs/hl7-fhir.md):

- MSH: our sending application and facility and the receiver's, from the settings; the
  message control id given by the caller (derived from the result, so a resend has the same
  one); version 2.5.1; character set UNICODE UTF-8 (non-ASCII text is sent as UTF-8).
- PID: the patient id (with its issuer) and name from the header; birth date and sex.
- ORC / OBR: the placer and filler order numbers (the header's, else the accession number as
  the filler's), the procedure (the header's requested procedure code, else the study
  description), the study's date and time, result status P (preliminary); OBR-27 and TQ1
  carry the worklist priority: S (stat) for urgent, R for routine.
- OBX 1: the finding, SNOMED CT 233604007 Pneumonia, present (52101004) or absent
  (272519000), abnormal flag A for a positive; OBX 2 and 3: P(pneumonia) and the threshold;
  OBX 4: the site profile; OBX 5: the model (name, version, SHA-256); OBX 6: "not a
  diagnosis". Every OBX is preliminary (P).

Every text value is escaped per HL7 v2 (2.10.4): the delimiters ``| ^ ~ \\ &`` become
``\\F\\ \\S\\ \\R\\ \\E\\ \\T\\`` and line breaks ``\\.br\\``, so a name or a description holding
them cannot change the message's structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom.dataset import Dataset

from worker.pacs.objects import NOT_A_DIAGNOSIS, Screening

VERSION = "2.5.1"
CHARSET = "UNICODE UTF-8"
LOCAL = "99XRS"  # our local coding system (HL7: local systems are named 99zzz)
PNEUMONIA = ("233604007", "Pneumonia", "SCT")
PRESENT = ("52101004", "Present", "SCT")
ABSENT = ("272519000", "Absent", "SCT")
PROBABILITY = ("probability", "P(pneumonia)", LOCAL)
THRESHOLD = ("threshold", "Operating threshold", LOCAL)
PROFILE = ("profile", "Site profile", LOCAL)
MODEL = ("model", "Screening model", LOCAL)
DISCLAIMER = ("disclaimer", "Not a diagnosis", LOCAL)
PRIORITIES = {"urgent": ("S", "Stat"), "routine": ("R", "Routine")}  # HL7 table 0485


@dataclass(frozen=True)
class Endpoint:
    """An application and facility, as MSH-3/4 (us) or MSH-5/6 (the receiver) name them."""

    application: str
    facility: str = ""


def escape(text: object) -> str:
    """``text`` as HL7 v2 field content: delimiters and line breaks escaped (the escape
    character first, so no escape sequence is escaped twice)."""
    value = "" if text is None else str(text)
    value = value.replace("\\", "\\E\\")
    for char, sequence in (("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\")):
        value = value.replace(char, sequence)
    return value.replace("\r\n", "\\.br\\").replace("\n", "\\.br\\").replace("\r", "\\.br\\")


def components(*values: object) -> str:
    """A field of components, each escaped, trailing empty ones dropped."""
    parts = [escape(v) for v in values]
    while parts and parts[-1] == "":
        parts.pop()
    return "^".join(parts)


def build_oru(
    source: Dataset,
    screening: Screening,
    created: datetime,
    *,
    sender: Endpoint,
    receiver: Endpoint,
    control_id: str,
    priority: str,
) -> str:
    """The ORU^R01 of one screening of ``source`` (a header is enough); segments end in CR."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority {priority!r}: expected one of {', '.join(PRIORITIES)}")
    when = _timestamp(created)
    placer = str(source.get("PlacerOrderNumberImagingServiceRequest", "") or "")
    filler = str(source.get("FillerOrderNumberImagingServiceRequest", "") or "") or str(
        source.get("AccessionNumber", "") or ""
    )
    code, text = PRIORITIES[priority]
    segments = [
        _segment(
            "MSH",
            "^~\\&",  # MSH-2: the encoding characters, as they are
            escape(sender.application),
            escape(sender.facility),
            escape(receiver.application),
            escape(receiver.facility),
            when,
            "",
            "ORU^R01^ORU_R01",
            escape(control_id),
            "P",
            VERSION,
            "",
            "",
            "",
            "",
            "",
            CHARSET,
            raw=True,
        ),
        _segment(
            "PID",
            "1",
            "",
            components(source.get("PatientID", ""), "", "", source.get("IssuerOfPatientID", ""), "PI"),
            "",
            _name(source.get("PatientName", "")),
            "",
            escape(source.get("PatientBirthDate", "")),
            escape(source.get("PatientSex", "")),
        ),
        _segment("ORC", "RE", escape(placer), escape(filler), "", "CM"),
        _segment(
            "OBR",
            "1",
            escape(placer),
            escape(filler),
            _procedure(source),
            "",
            "",
            _study_time(source),
            *[""] * 10,  # OBR-8 .. OBR-17
            escape(source.get("AccessionNumber", "")),  # OBR-18: placer field 1, the accession
            *[""] * 3,  # OBR-19 .. OBR-21
            when,  # OBR-22: results reported
            "",
            "RAD",  # OBR-24: diagnostic service section (HL7 table 0074)
            "P",  # OBR-25: preliminary
            "",
            f"^^^^^{code}",  # OBR-27: quantity/timing, its priority component
        ),
        _segment("TQ1", "1", *[""] * 7, f"{code}^{text}^HL70485"),  # TQ1-9: priority
    ]
    finding_value = components(*(PRESENT if screening.positive else ABSENT))
    observations = [Observation("CWE", PNEUMONIA, finding_value, "A" if screening.positive else "")]
    observations.append(Observation("NM", PROBABILITY, _number(screening.probability), unit=True))
    if screening.threshold is not None:
        observations.append(Observation("NM", THRESHOLD, _number(screening.threshold), unit=True))
    if screening.site_profile:
        observations.append(Observation("ST", PROFILE, escape(screening.site_profile)))
    model = f"{screening.model_name} {screening.model_version} sha256:{screening.model_sha256}"
    observations.append(Observation("ST", MODEL, escape(model)))
    observations.append(Observation("TX", DISCLAIMER, escape(NOT_A_DIAGNOSIS)))
    segments += [_obx(n, o, when) for n, o in enumerate(observations, 1)]
    return "".join(s + "\r" for s in segments)


def _segment(name: str, *fields: str, raw: bool = False) -> str:
    """A segment of already-escaped fields, trailing empty ones dropped. MSH's first field is
    the field separator itself (``raw``: MSH-1 is not written as a field)."""
    values = list(fields)
    while values and values[-1] == "":
        values.pop()
    return f"{name}|" + "|".join(values) if not raw else "MSH|" + "|".join(values)


@dataclass(frozen=True)
class Observation:
    """One OBX: its value type, code (code, text, system), escaped value, abnormal flag."""

    kind: str
    code: tuple[str, str, str]
    value: str
    abnormal: str = ""
    unit: bool = False  # a ratio: OBX-6 says 1 (UCUM)


def _obx(n: int, o: Observation, when: str) -> str:
    return _segment(
        "OBX",
        str(n),
        o.kind,
        components(*o.code),
        "",
        o.value,
        "1^^UCUM" if o.unit else "",  # OBX-6: a ratio has the unit 1
        "",
        o.abnormal,  # OBX-8: A for a positive finding
        "",
        "",
        "P",  # OBX-11: preliminary
        "",
        "",
        when,  # OBX-14: when the model screened it
    )


def _name(value: object) -> str:
    """A DICOM PN (family^given^middle^prefix^suffix) as an HL7 XPN
    (family^given^second^suffix^prefix), its first (alphabetic) group only."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else ""  # a name with a backslash: its first value
    alphabetic = str(value or "").split("=", 1)[0]
    family, given, middle, prefix, suffix = (alphabetic.split("^") + [""] * 5)[:5]
    return components(family, given, middle, suffix, prefix)


def _procedure(source: Dataset) -> str:
    """OBR-4: the requested procedure's code (code^meaning^scheme), else the study description."""
    for keyword in ("RequestedProcedureCodeSequence", "ProcedureCodeSequence"):
        items = source.get(keyword) or []
        if items:
            item = items[0]
            return components(
                item.get("CodeValue", ""), item.get("CodeMeaning", ""), item.get("CodingSchemeDesignator", "")
            )
    description = source.get("StudyDescription", "") or source.get("RequestedProcedureDescription", "")
    return components("", description) if description else ""


def _study_time(source: Dataset) -> str:
    """OBR-7: the study's date and time as the header has them (DICOM DA + TM: HL7's form)."""
    day = str(source.get("StudyDate", "") or "")
    time = str(source.get("StudyTime", "") or "").split(".", 1)[0]
    return escape(day + time) if day.isdigit() and (not time or time.isdigit()) else ""


def _number(value: float) -> str:
    return f"{value:.4f}"


def _timestamp(created: datetime) -> str:
    """HL7 DTM with its offset: YYYYMMDDHHMMSS+ZZZZ (a naive time is taken as UTC)."""
    aware = created if created.tzinfo else created.replace(tzinfo=UTC)
    return aware.strftime("%Y%m%d%H%M%S%z")
