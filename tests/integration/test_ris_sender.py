"""The sender's RIS and EHR transports (``worker/ris/mllp.py``, ``worker/ris/fhir_client.py``) on a
real SQLite outbox, against python-hl7's own MLLP server and a FHIR endpoint that validates with
fhir.resources (``tests/support/ris_endpoints.py``): what each answer does to the row."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import hl7
import pytest
from ris_endpoints import FhirEndpoint, MllpListener, free_port, self_signed
from screenings import header, screening
from sqlalchemy import Engine, select
from test_sender import T0, Clock

from worker.config import FhirDestination, Hl7Destination, PacsSettings
from worker.db import outbox
from worker.db.outbox import OutboxItem
from worker.db.schema import outbox as outbox_table
from worker.pacs.sender import Sender
from worker.ris.fhir import build_bundle
from worker.ris.oru import Endpoint, build_oru

pytest_plugins = ["db_fixtures"]
AWKWARD = {  # HL7's delimiters and non-ASCII text in the header
    "PatientID": "P|1~2&3",
    "PatientName": "Müller-Łukasz^Zoë^^Dr.",
    "StudyDescription": "XR CHEST | PA ^ lateral & more ~ done",
    "AccessionNumber": "ACC^7",
}


def source(n: int, **values: Any) -> Any:
    uids = {
        "SOPInstanceUID": f"1.2.826.0.1.3680043.10.543.{n}",
        "StudyInstanceUID": "1.2.826.0.1.3680043.10.543",
    }
    return header({**uids, "PatientID": f"P{n}", "PatientName": "Doe^Jane"}, **values)


def queue_oru(engine: Engine, destination: str, n: int = 1, **values: Any) -> list[str]:
    """``n`` ORUs for ``destination``; their control ids."""
    items, ids = [], []
    for i in range(n):
        control = f"CTRL{i}"
        text = build_oru(
            source(i, **values),
            screening(positive=i % 2 == 0),
            T0,
            sender=Endpoint("XRAY_SCREEN"),
            receiver=Endpoint("RIS"),
            control_id=control,
            priority="urgent",
        )
        items.append(OutboxItem(destination, "hl7", "", f"2.25.{i}", None, text.encode("utf-8")))
        ids.append(control)
    with engine.begin() as conn:
        outbox.enqueue(conn, items, now=T0)
    return ids


def queue_bundle(engine: Engine, destination: str, n: int = 1) -> None:
    items = [
        OutboxItem(
            destination,
            "fhir",
            "",
            f"2.25.9{i}",
            None,
            json.dumps(build_bundle(source(i), screening(), T0, priority="urgent")).encode(),
        )
        for i in range(n)
    ]
    with engine.begin() as conn:
        outbox.enqueue(conn, items, now=T0)


def rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(outbox_table).order_by(outbox_table.c.id)))


def sender(engine: Engine, *destinations: Any, clock: Clock | None = None, **secrets: str) -> Sender:
    settings = PacsSettings(backoff_base=10.0, backoff_cap=60.0, max_attempts=5)
    return Sender(settings, engine, clock=clock or Clock(), ris=destinations, passwords=secrets)


def bearer(url: str) -> FhirDestination:
    """A FHIR destination with a bearer token (from the variable T)."""
    return FhirDestination(name="ehr", base_url=url, auth="bearer", secret_env="T", timeout=5)  # noqa: S106


def ris(port: int, **kw: Any) -> Hl7Destination:
    return Hl7Destination(name="ris", host="127.0.0.1", port=port, **{"timeout": 2.0, **kw})


def test_aa_delivers_every_oru_and_the_listener_parses_the_header_back_unchanged(engine: Engine):
    ids = queue_oru(engine, "ris", 3, **AWKWARD)
    with MllpListener() as listener:
        assert sender(engine, ris(listener.port)).step() == 3
    assert [r.status for r in rows(engine)] == ["delivered"] * 3
    assert listener.acked == {i: 1 for i in ids}
    for message in listener.received:
        pid = message.segment("PID")
        assert message.unescape(str(pid[3][0][0])) == "P|1~2&3"
        assert message.unescape(str(pid[5])) == "Müller-Łukasz^Zoë^^^Dr."  # prefix -> XPN-5
        obr = message.segment("OBR")
        assert message.unescape(str(obr[4][0][1])) == AWKWARD["StudyDescription"]
        assert message.unescape(str(obr[18])) == "ACC^7"


def test_a_listener_that_is_down_leaves_the_rows_pending_with_no_connection(engine: Engine):
    queue_oru(engine, "ris", 2)
    assert sender(engine, ris(free_port())).step() == 2
    assert {(r.status, r.attempts) for r in rows(engine)} == {("pending", 1)}
    assert all(
        r.last_error.startswith("NoConnection: no connection to mllp://127.0.0.1:") for r in rows(engine)
    )


def test_ae_is_retried_and_aa_then_delivers_it_once(engine: Engine):
    [control] = queue_oru(engine, "ris")
    answers = iter(["AE", "AA"])
    clock = Clock()
    with MllpListener(reply=lambda m: next(answers)) as listener:
        s = sender(engine, ris(listener.port), clock=clock)
        s.step()
        [row] = rows(engine)
        assert (row.status, row.attempts, row.last_error) == (
            "pending",
            1,
            "ApplicationError: AE: the test said AE",
        )
        assert s.step() == 0  # not due before its backoff
        clock.now += timedelta(seconds=60)
        assert s.step() == 1
    [row] = rows(engine)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 2, None)
    assert listener.acked == {control: 1}
    assert len(listener.received) == 2


@pytest.mark.parametrize(
    ("reply", "status", "error"),
    [
        ("AR", "failed", "Rejected: AR: the test said AR"),
        ("garbage", "pending", "BadAck: not an HL7 ACK: 'HELLO, THIS IS NOT HL7'"),
        ("wrong", "pending", "WrongAck: ACK for control id 'SOMEONE-ELSE', not ours 'CTRL0'"),
        ("silent", "pending", "NoAck: no ACK from mllp://127.0.0.1:"),
        ("close", "pending", "NoAck: mllp://127.0.0.1:"),
    ],
)
def test_what_each_bad_answer_does_to_the_row(engine: Engine, reply: str, status: str, error: str):
    queue_oru(engine, "ris", 3)
    with MllpListener(reply=lambda m: reply) as listener:
        sender(engine, ris(listener.port, timeout=0.5)).step()
    first, *rest = rows(engine)
    assert (first.status, first.attempts) == (status, 1)
    assert first.last_error.startswith(error)
    assert listener.acked == {}
    if reply == "AR":  # a clean NAK: the connection goes on with the next message
        assert [(r.status, r.attempts) for r in rest] == [("failed", 1)] * 2
    else:  # the stream cannot be trusted: the rest stays untried, pending as it was
        assert len(listener.received) == 1
        assert [(r.status, r.attempts, r.last_error) for r in rest] == [("pending", 0, None)] * 2


def test_mllp_over_tls_checks_the_listener_s_certificate(engine: Engine, tmp_path: Path):
    [control] = queue_oru(engine, "ris")
    cert, context = self_signed(tmp_path)
    with MllpListener(tls=context) as listener:
        sender(engine, ris(listener.port, tls=True)).step()  # the system's CAs do not know it
        [row] = rows(engine)
        assert (row.status, row.last_error.split(":")[0]) == ("pending", "NoConnection")
        assert "CERTIFICATE_VERIFY_FAILED" in row.last_error
        with engine.begin() as conn:
            conn.execute(outbox_table.update().values(next_attempt_at=T0))
        sender(engine, ris(listener.port, tls=True, tls_ca=str(cert))).step()
    [row] = rows(engine)
    assert row.status == "delivered"
    assert listener.acked == {control: 1}


def test_fhir_201_delivers_and_a_resend_creates_nothing_new(engine: Engine):
    queue_bundle(engine, "ehr", 2)
    with FhirEndpoint(token="s3cret") as ehr:  # noqa: S106
        d = bearer(ehr.url)
        assert sender(engine, d, ehr="s3cret").step() == 2
        assert [r.status for r in rows(engine)] == ["delivered"] * 2
        assert ehr.created == {"Device": 1, "Observation": 2, "DiagnosticReport": 2}  # one model
        with engine.begin() as conn:  # sent again, as after a crash between the answer and the commit
            outbox.requeue(conn, now=T0)
            conn.execute(outbox_table.update().values(status="pending"))
        sender(engine, d, ehr="s3cret").step()
    assert ehr.posts == 4
    assert ehr.created == {"Device": 1, "Observation": 2, "DiagnosticReport": 2}


@pytest.mark.parametrize(
    ("statuses", "status", "error"),
    [
        ([503], "pending", "FhirUnavailable: http://127.0.0.1:"),
        ([429], "pending", "FhirUnavailable:"),
        ([408], "pending", "FhirUnavailable:"),
        ([400], "failed", "FhirRefused:"),
        ([422], "failed", "FhirRefused:"),
    ],
)
def test_what_each_http_status_does_to_the_row(engine: Engine, statuses: list[int], status: str, error: str):
    queue_bundle(engine, "ehr")
    with FhirEndpoint(statuses=statuses) as ehr:
        sender(engine, FhirDestination(name="ehr", base_url=ehr.url, timeout=5)).step()
    [row] = rows(engine)
    assert (row.status, row.attempts) == (status, 1)
    assert row.last_error.startswith(error)
    assert f"the test answers {statuses[0]}" in row.last_error  # the OperationOutcome's text


def test_a_wrong_token_fails_with_a_hint_and_no_server_is_a_retry(engine: Engine):
    queue_bundle(engine, "ehr")
    with FhirEndpoint(token="right") as ehr:  # noqa: S106
        d = bearer(ehr.url)
        sender(engine, d, ehr="wrong").step()
    [row] = rows(engine)
    assert row.status == "failed"
    assert "HTTP 401" in row.last_error and "check auth, username and secret_env" in row.last_error
    queue_bundle(engine, "gone")
    gone = FhirDestination(name="gone", base_url=f"http://127.0.0.1:{free_port()}/fhir", timeout=2)
    sender(engine, gone).step()
    row = rows(engine)[-1]
    assert (row.status, row.last_error.split(":")[0]) == ("pending", "FhirUnavailable")


def test_the_oru_s_control_id_is_what_the_ack_must_name():
    oru = build_oru(
        source(1),
        screening(),
        T0,
        sender=Endpoint("A"),
        receiver=Endpoint("B"),
        control_id="X1",
        priority="routine",
    )
    assert str(hl7.parse(oru).segment("MSH")[10]) == "X1"
