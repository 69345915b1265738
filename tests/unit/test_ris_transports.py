"""The RIS/EHR transports' judgements, without a network: what an ACK says about our message
(``worker/ris/mllp.py``), the FHIR auth header and an OperationOutcome's text
(``worker/ris/fhir_client.py``)."""

from __future__ import annotations

import base64
import json

import pytest

from worker.config import FhirDestination
from worker.ris import fhir_client, mllp

MSH = "MSH|^~\\&|RIS|HOSP|XRAY_SCREEN|RADIOLOGY|20261208090000||ACK^R01^ACK|A1|P|2.5.1\r"


def ack(msa: str) -> bytes:
    return (MSH + msa + "\r").encode()


@pytest.mark.parametrize(
    ("msa", "kind", "reason"),
    [
        ("MSA|AA|XRS1", None, ""),
        ("MSA|CA|XRS1", None, ""),
        ("MSA|AE|XRS1|busy", mllp.ApplicationError, "ApplicationError: AE: busy"),
        ("MSA|CE|XRS1", mllp.ApplicationError, "ApplicationError: CE"),
        ("MSA|AR|XRS1|unknown patient", mllp.Rejected, "Rejected: AR: unknown patient"),
        ("MSA|AA|XRS2", mllp.WrongAck, "WrongAck: ACK for control id 'XRS2', not ours 'XRS1' (MSA-1 'AA')"),
        ("MSA|AA", mllp.WrongAck, "WrongAck: ACK for control id '', not ours 'XRS1'"),
        ("MSA|OK|XRS1", mllp.BadAck, "BadAck: MSA-1 'OK' is no acknowledgment code"),
        ("PID|1", mllp.BadAck, "BadAck: not an HL7 ACK"),
    ],
)
def test_what_an_ack_says_about_our_message(msa: str, kind: type | None, reason: str):
    answer = mllp.judge(ack(msa), "XRS1")
    if kind is None:
        assert answer is None
    else:
        assert type(answer) is kind
        assert answer.reason.startswith(reason)


@pytest.mark.parametrize("block", [b"", b"HELLO", b"\xff\xfe not utf-8", b"MSA|AA|XRS1\r"])
def test_anything_but_an_hl7_ack_is_a_bad_ack(block: bytes):
    assert isinstance(mllp.judge(block, "XRS1"), mllp.BadAck)


def test_kinds_say_what_happens_next():
    from worker.errors import PermanentError, TransientError

    assert all(
        issubclass(k, TransientError) for k in (mllp.NoAck, mllp.BadAck, mllp.WrongAck, mllp.NoConnection)
    )
    assert issubclass(mllp.Rejected, PermanentError) and issubclass(fhir_client.FhirRefused, PermanentError)
    assert issubclass(fhir_client.FhirUnavailable, TransientError)


def test_authorization_headers():
    url = "http://ehr/fhir"
    assert fhir_client.authorization(FhirDestination(name="e", base_url=url), "") == {}
    bearer = FhirDestination(name="e", base_url=url, auth="bearer", secret_env="T")  # noqa: S106
    assert fhir_client.authorization(bearer, "tok") == {"Authorization": "Bearer tok"}
    basic = FhirDestination(name="e", base_url=url, auth="basic", username="xray", secret_env="P")  # noqa: S106
    [(name, value)] = fhir_client.authorization(basic, "pw").items()
    assert (name, base64.b64decode(value.removeprefix("Basic ")).decode()) == ("Authorization", "xray:pw")


def test_an_operation_outcome_s_text():
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": "Bundle.entry[1]: bad"},
            {"severity": "error", "code": "required", "details": {"text": "subject missing"}},
            {"severity": "error", "code": "processing"},
        ],
    }
    assert fhir_client.outcome_text(json.dumps(outcome).encode()) == (
        "Bundle.entry[1]: bad; subject missing; processing"
    )
    assert fhir_client.outcome_text(b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
    assert fhir_client.outcome_text(b"") == "(no body)"
    assert fhir_client.outcome_text(b"{}") == "(no OperationOutcome text)"
