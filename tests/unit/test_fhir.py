"""The FHIR transaction Bundle of a result (worker/ris/fhir.py): valid R4B resources (checked
again here by fhir.resources, resource by resource), conditional creates on identifiers
derived from (source, model), and the same Bundle for the same inputs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from pydicom.dataset import Dataset
from screenings import MODEL_SHA as SHA
from screenings import header as make_header
from screenings import screening

from worker.ris.fhir import build_bundle

WHEN = datetime(2026, 12, 7, 22, 5, 9, tzinfo=UTC)


HEADER = {
    "PatientID": "P123",
    "IssuerOfPatientID": "HOSP",
    "PatientName": "Müller^Zoë",
    "StudyDate": "20261207",
    "StudyTime": "101500",
    "StudyInstanceUID": "1.2.840.1",
    "SOPInstanceUID": "1.2.840.1.7",
}


def header(**values: object) -> Dataset:
    return make_header(HEADER, **values)


def resources(bundle: dict) -> dict[str, dict]:
    return {e["resource"]["resourceType"]: e["resource"] for e in bundle["entry"]}


def test_a_transaction_of_device_observation_and_report_each_a_conditional_create():
    bundle = build_bundle(header(), screening(), WHEN, priority="urgent")
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    assert [e["request"]["url"] for e in bundle["entry"]] == ["Device", "Observation", "DiagnosticReport"]
    for entry in bundle["entry"]:
        system, value = entry["request"]["ifNoneExist"].removeprefix("identifier=").split("|", 1)
        assert {"system": system, "value": value} in entry["resource"]["identifier"]
        assert entry["request"]["method"] == "POST" and entry["fullUrl"].startswith("urn:uuid:")
    by_type = resources(bundle)
    assert by_type["Device"]["identifier"][0]["value"] == SHA
    assert by_type["DiagnosticReport"]["identifier"][0]["value"] == f"1.2.840.1.7/{SHA}"


def test_the_report_and_its_observation_say_what_the_result_says():
    by_type = resources(build_bundle(header(), screening(), WHEN, priority="urgent"))
    report, observation = by_type["DiagnosticReport"], by_type["Observation"]
    DiagnosticReport.model_validate(report)
    Observation.model_validate(observation)
    assert report["status"] == "preliminary" and observation["status"] == "preliminary"
    assert report["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "36554-4",
        "display": "XR Chest Single view",
    }
    assert report["conclusionCode"][0]["coding"][0]["code"] == "233604007"
    assert "NOT A DIAGNOSIS" in report["conclusion"] and "0.8731" in report["conclusion"]
    assert report["imagingStudy"][0]["identifier"] == {
        "system": "urn:dicom:uid",
        "value": "urn:oid:1.2.840.1",
    }
    assert report["meta"]["tag"] == [{"system": "urn:xray-screen:priority", "code": "urgent"}]
    assert report["result"][0]["reference"] == next(
        e["fullUrl"]
        for e in build_bundle(header(), screening(), WHEN, priority="urgent")["entry"]
        if e["resource"]["resourceType"] == "Observation"
    )
    assert observation["valueQuantity"]["value"] == pytest.approx(0.8731)
    assert observation["component"][0]["valueQuantity"]["value"] == pytest.approx(0.1439)
    assert observation["interpretation"][0]["coding"][0]["code"] == "POS"
    assert report["subject"]["identifier"] == {"system": "urn:xray-screen:issuer:HOSP", "value": "P123"}
    assert report["subject"]["display"] == "Müller Zoë"
    assert report["effectiveDateTime"] == "2026-12-07"


def test_a_negative_has_no_conclusion_code_and_a_routine_priority():
    by_type = resources(build_bundle(header(), screening(False, threshold=None), WHEN, priority="routine"))
    report, observation = by_type["DiagnosticReport"], by_type["Observation"]
    assert "conclusionCode" not in report and "not found" in report["conclusion"]
    assert observation["interpretation"][0]["coding"][0]["code"] == "NEG" and "component" not in observation
    assert report["meta"]["tag"][0]["code"] == "routine"


def test_the_same_result_gives_the_same_bundle_and_another_model_another_report():
    first = build_bundle(header(), screening(), WHEN, priority="urgent")
    assert build_bundle(header(), screening(), WHEN, priority="urgent") == first
    other = build_bundle(header(), screening(model_sha256="ef" * 32), WHEN, priority="urgent")
    assert [e["fullUrl"] for e in other["entry"]] != [e["fullUrl"] for e in first["entry"]]
    with pytest.raises(ValueError, match="priority"):
        build_bundle(header(), screening(), WHEN, priority="stat")
