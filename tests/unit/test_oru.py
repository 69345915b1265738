"""The ORU^R01 of a result (worker/ris/oru.py), parsed back by an independent HL7 library
(python-hl7): every field the RIS reads comes back as the header and the result have it,
whatever delimiters or non-ASCII letters the header holds."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7
import pytest
from pydicom.dataset import Dataset
from screenings import MODEL_SHA as SHA
from screenings import header as make_header
from screenings import screening as make_screening

from worker.ris.oru import Endpoint, build_oru, escape

WHEN = datetime(2026, 12, 7, 22, 5, 9, tzinfo=UTC)


HEADER = {
    "PatientID": "P|12^3",
    "IssuerOfPatientID": "HOSP&1",
    "PatientName": "O'Brien|Müller^Zoë~Ann^^Dr^III",  # a DICOM value holds no backslash
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "AccessionNumber": "ACC|42",
    "StudyDate": "20261207",
    "StudyTime": "101500.123",
    "StudyDescription": "XR CHEST & RIBS\nPA/LAT",
    "StudyInstanceUID": "1.2.3",
    "SOPInstanceUID": "1.2.3.4",
}


def header(**values: object) -> Dataset:
    return make_header(HEADER, **values)


def screening(positive: bool = True, **kw):
    """A result whose site profile holds an HL7 delimiter and a backslash."""
    return make_screening(positive, **{"site_profile": "adult|NIH\\v2", **kw})


def oru(source: Dataset | None = None, result=None, priority: str = "urgent") -> str:
    return build_oru(
        source if source is not None else header(),
        result or screening(),
        WHEN,
        sender=Endpoint("XRAY_SCREEN", "RAD^DEPT"),
        receiver=Endpoint("RIS", "HOSP"),
        control_id="c0ffee",
        priority=priority,
    )


def field(message: hl7.Message, segment: str, n: int, index: int = 0) -> str:
    """Field ``n`` of the ``index``-th ``segment``, unescaped, as the listener reads it."""
    seg = [s for s in message if str(s[0]) == segment][index]
    return message.unescape(str(seg[n]))


def component(message: hl7.Message, segment: str, n: int, c: int, index: int = 0) -> str:
    """Component ``c`` of that field, unescaped (the raw field holds no unescaped ``^``)."""
    seg = [s for s in message if str(s[0]) == segment][index]
    parts = str(seg[n]).split("^")
    return message.unescape(parts[c - 1]) if len(parts) >= c else ""


def test_the_message_parses_and_names_what_it_is():
    text = oru()
    assert text.endswith("\r") and "\n" not in text
    message = hl7.parse(text)
    assert [str(s[0]) for s in message] == ["MSH", "PID", "ORC", "OBR", "TQ1", *["OBX"] * 6]
    assert str(message.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert field(message, "MSH", 10) == "c0ffee" and str(message.segment("MSH")[12]) == "2.5.1"
    assert str(message.segment("MSH")[18]) == "UNICODE UTF-8"
    assert field(message, "MSH", 7) == "20261207220509+0000"
    assert component(message, "MSH", 4, 1) == "RAD^DEPT"  # the facility's own ^ escaped


def test_delimiters_and_non_ascii_in_the_header_come_back_unchanged():
    message = hl7.parse(oru())
    assert component(message, "PID", 3, 1) == "P|12^3"
    assert component(message, "PID", 3, 4) == "HOSP&1"
    assert component(message, "PID", 3, 5) == "PI"
    assert component(message, "PID", 5, 1) == "O'Brien|Müller"
    assert component(message, "PID", 5, 2) == "Zoë~Ann"
    assert component(message, "PID", 5, 4) == "III" and component(message, "PID", 5, 5) == "Dr"  # XPN order
    assert field(message, "ORC", 3) == "ACC|42" and field(message, "OBR", 18) == "ACC|42"
    assert component(message, "OBR", 4, 2) == "XR CHEST & RIBS\rPA/LAT"  # a line break: \\.br\\
    assert field(message, "OBR", 7) == "20261207101500"


def test_the_finding_the_figures_and_the_model_are_observations():
    message = hl7.parse(oru())
    assert [component(message, "OBX", 3, 1, i) for i in range(6)] == [
        "233604007",
        "probability",
        "threshold",
        "profile",
        "model",
        "disclaimer",
    ]
    assert component(message, "OBX", 3, 3, 0) == "SCT"
    assert component(message, "OBX", 5, 1, 0) == "52101004"  # present
    assert field(message, "OBX", 8, 0) == "A"  # abnormal: a positive finding
    assert float(field(message, "OBX", 5, 1)) == pytest.approx(0.8731)
    assert float(field(message, "OBX", 5, 2)) == pytest.approx(0.1439)
    assert field(message, "OBX", 5, 3) == "adult|NIH\\v2"
    assert field(message, "OBX", 5, 4) == f"pneumonia-resnet18 2026.12 sha256:{SHA}"
    assert "NOT A DIAGNOSIS" in field(message, "OBX", 5, 5)
    assert all(field(message, "OBX", 11, i) == "P" for i in range(6))  # preliminary
    assert field(message, "OBR", 25) == "P"


def test_a_negative_is_absent_and_not_flagged_and_the_priority_is_the_callers():
    message = hl7.parse(oru(result=screening(False), priority="routine"))
    assert component(message, "OBX", 5, 1, 0) == "272519000"  # absent
    assert field(message, "OBX", 8, 0) == ""
    assert str(message.segment("TQ1")[9]) == "R^Routine^HL70485"
    assert str(message.segment("OBR")[27]) == "^^^^^R"
    urgent = hl7.parse(oru(priority="urgent"))
    assert str(urgent.segment("TQ1")[9]) == "S^Stat^HL70485" and str(urgent.segment("OBR")[27]) == "^^^^^S"


def test_empty_identifiers_and_a_result_without_threshold_or_profile():
    bare = header(AccessionNumber="", PatientName="", StudyDescription="")
    del bare.IssuerOfPatientID
    message = hl7.parse(oru(bare, screening(threshold=None, site_profile=None)))
    assert field(message, "ORC", 3) == "" and field(message, "OBR", 4) == ""
    assert [component(message, "OBX", 3, 1, i) for i in range(4)] == [
        "233604007",
        "probability",
        "model",
        "disclaimer",
    ]


def test_the_same_result_gives_the_same_bytes_and_a_bad_priority_is_refused():
    assert oru() == oru()
    with pytest.raises(ValueError, match="priority"):
        oru(priority="soon")


def test_escape_escapes_the_escape_character_first():
    assert escape("a\\F\\b|c") == "a\\E\\F\\E\\b\\F\\c"
    assert hl7.parse("MSH|^~\\&|x\r").unescape(escape("|^~\\& é\n")) == "|^~\\& é\r"
