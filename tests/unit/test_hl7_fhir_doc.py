"""docs/hl7-fhir.md shows one full ORU^R01 and one full FHIR Bundle: they are what the builders
(worker/ris/oru.py, worker/ris/fhir.py) make of the documented inputs, byte for byte. When a
builder changes, this fails with the new text; `python tests/unit/test_hl7_fhir_doc.py`
writes it into the page."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from screenings import header, screening

from worker.ris.fhir import build_bundle
from worker.ris.oru import Endpoint, build_oru

PAGE = Path(__file__).resolve().parents[2] / "docs" / "hl7-fhir.md"
# The documented film: a positive, urgent, as docs/hl7-fhir.md describes it.
HEADER = {
    "PatientID": "P123456",
    "IssuerOfPatientID": "HOSP",
    "PatientName": "Müller^Zoë",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "AccessionNumber": "ACC20261207-42",
    "StudyDate": "20261207",
    "StudyTime": "101500",
    "StudyDescription": "XR CHEST PA",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.1.1",
}
WHEN = datetime(2026, 12, 7, 10, 16, 2, tzinfo=UTC)


def examples() -> dict[str, str]:
    source, result = header(HEADER), screening()
    message = build_oru(
        source,
        result,
        WHEN,
        sender=Endpoint("XRAY_SCREEN", "RADIOLOGY"),
        receiver=Endpoint("RIS", "HOSPITAL"),
        control_id="XRS-0000000042",
        priority="urgent",
    )
    bundle = build_bundle(source, result, WHEN, priority="urgent")
    text = json.dumps(bundle, indent=2, ensure_ascii=False)
    return {"hl7": message.replace("\r", "\n"), "json": text + "\n"}


def blocks(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"```(hl7|json)\n(.*?)```", text, re.S)}


def test_the_pages_examples_are_what_the_builders_make():
    shown, made = blocks(PAGE.read_text(encoding="utf-8")), examples()
    for kind in ("hl7", "json"):
        assert shown.get(kind) == made[kind], f"docs/hl7-fhir.md's {kind} example is stale:\n{made[kind]}"


if __name__ == "__main__":  # rewrite the page's examples
    text = PAGE.read_text(encoding="utf-8")
    for kind, body in examples().items():
        text = re.sub(rf"```{kind}\n.*?```", lambda _m, k=kind, b=body: f"```{k}\n{b}```", text, flags=re.S)
    PAGE.write_text(text, encoding="utf-8")
