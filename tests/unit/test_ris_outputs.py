"""The RIS/EHR sink on the fakes (``worker/sinks/ris.py``): the daemon queues an ORU per HL7
destination and a Bundle per FHIR destination for each screened DICOM, with the result; the
same result queued again is the same row; python-hl7 parses each ORU back to the result's facts."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import hl7
import pytest
from fakes import MemoryStore, film
from pydicom.uid import generate_uid
from test_outputs import Headers, daemon, drop

from worker.config import FhirDestination, Hl7Destination, WorklistSettings
from worker.errors import ConfigError
from worker.pacs.uids import instance_uid
from worker.sinks.ris import RisOutputs, control_id

HL7 = (
    Hl7Destination(name="ris", host="ris", receiving_application="RIS", receiving_facility="HOSP"),
    Hl7Destination(name="engine", host="mirth", sending_application="XRS2"),
)
FHIR = (FhirDestination(name="ehr", base_url="http://ehr/fhir"),)


def outputs(headers: Headers, worklist: WorklistSettings | None = None) -> RisOutputs:
    return RisOutputs(HL7, FHIR, worklist or WorklistSettings(), header=headers)


def test_the_daemon_queues_an_oru_per_hl7_and_a_bundle_per_fhir_destination(tmp_path: Path):
    store, headers = MemoryStore(), Headers()
    (tmp_path / "inbox").mkdir()
    films = {"pos_dcm": film("PNEUMONIA", 0.9), "neg_dcm": film("NORMAL", 0.1)}
    drop(tmp_path, **films, photo_png=film("PNEUMONIA", 0.8))
    daemon(tmp_path, store, outputs=outputs(headers)).step()
    rows = list(store.outbox.values())
    assert sorted((o.kind, o.destination) for o in rows) == sorted(
        [
            ("hl7", "ris"),
            ("hl7", "ris"),
            ("hl7", "engine"),
            ("hl7", "engine"),
            ("fhir", "ehr"),
            ("fhir", "ehr"),
        ]
    )  # the PNG: nothing
    results = {r.content_sha256: r for r in store.results.values()}
    source = {hashlib.sha256(f).hexdigest(): generate_uid(entropy_srcs=[f.decode()]) for f in films.values()}
    for o in rows:
        result = results[o.result_key[1]]
        assert o.sop_instance_uid == instance_uid(source[result.content_sha256], result.model_sha256, o.kind)
        if o.kind == "fhir":
            bundle = json.loads(o.payload)
            report = bundle["entry"][2]["resource"]
            assert report["meta"]["tag"][0]["code"] == ("urgent" if result.positive else "routine")
            assert bundle["entry"][1]["resource"]["valueQuantity"]["value"] == pytest.approx(
                result.positive_probability, abs=1e-6
            )
            continue
        message = hl7.parse(o.payload.decode("utf-8"))
        assert str(message.segment("MSH")[10]) == control_id(o.sop_instance_uid)
        assert str(message.segment("MSH")[3]) == ("XRAY_SCREEN" if o.destination == "ris" else "XRS2")
        assert str(message.segment("MSH")[5]) == ("RIS" if o.destination == "ris" else "")
        assert str(message.segment("PID")[5]) == "Doe^J"
        assert str(message.segment("OBR")[27]) == ("^^^^^S" if result.positive else "^^^^^R")
        obx = {str(s[3][0][0]): s for s in message.segments("OBX")}
        assert float(str(obx["probability"][5])) == pytest.approx(result.positive_probability, abs=1e-4)
        assert str(obx["233604007"][8]) == ("A" if result.positive else "")
        assert result.model_sha256 in str(obx["model"][5])


def test_the_same_result_queued_again_is_the_same_row(tmp_path: Path):
    store, headers = MemoryStore(), Headers()
    (tmp_path / "inbox").mkdir()
    drop(tmp_path, pos_dcm=film("PNEUMONIA", 0.9))
    ris = outputs(headers)
    daemon(tmp_path, store, outputs=ris).step()
    [result] = store.results.values()
    item = type("Item", (), {"path": headers.read[0], "name": "pos.dcm"})()
    headers.read[0].parent.mkdir(parents=True, exist_ok=True)
    headers.read[0].write_bytes(film("PNEUMONIA", 0.9))  # the header reader needs the file
    again = ris.messages(item, result)
    assert {(o.sop_instance_uid, o.destination, o.payload) for o in again} == {
        (o.sop_instance_uid, o.destination, o.payload) for o in store.outbox.values()
    }


def test_priorities_follow_the_worklist_settings(tmp_path: Path):
    store, headers = MemoryStore(), Headers()
    (tmp_path / "inbox").mkdir()
    drop(tmp_path, neg_dcm=film("NORMAL", 0.1))
    worklist = WorklistSettings(priority_positive="urgent", priority_negative="urgent")
    daemon(tmp_path, store, outputs=outputs(headers, worklist)).step()
    oru = next(o for o in store.outbox.values() if o.kind == "hl7")
    assert str(hl7.parse(oru.payload.decode()).segment("TQ1")[9]) == "S^Stat^HL70485"


def test_a_fhir_destination_without_fhir_resources_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "fhir.resources.R4B.bundle", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'xray-screen\[lean,ehr\]'"):
        RisOutputs((), FHIR, WorklistSettings(), header=Headers())
    assert RisOutputs(HL7, (), WorklistSettings(), header=Headers())  # HL7 alone needs none of it
