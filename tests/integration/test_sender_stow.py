"""The sender's STOW-RS transport against a DICOMweb stand-in: an ``http.server`` on 127.0.0.1
that parses each multipart request and answers with the HTTP status and DICOM JSON a test chose."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import Engine
from test_sender import T0, Clock, free_port, queue, state

from worker.config import PacsDestination, PacsSettings
from worker.pacs import stow
from worker.pacs.sender import Sender

pytest_plugins = ["db_fixtures"]


class FakeDicomWeb:
    """``POST /dicom-web/studies``: ``status`` is the HTTP status to answer (200 and 202 with a
    DICOM JSON body); ``refuse`` maps a SOP Instance UID to the failure reason to list it with,
    ``unlisted`` are left out of the answer; ``drop`` closes the connection without an answer;
    ``auth`` = (user, password) requires basic auth. ``requests`` holds each request's
    (path, content type, SOP Instance UIDs)."""

    def __init__(self) -> None:
        self.status = 200
        self.refuse: dict[str, int] = {}
        self.unlisted: set[str] = set()
        self.drop = False
        self.auth: tuple[str, str] | None = None
        self.requests: list[tuple[str, str, list[str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if fake.drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                if fake.auth is not None:
                    expected = base64.b64encode(":".join(fake.auth).encode()).decode()
                    if self.headers.get("Authorization") != f"Basic {expected}":
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="pacs"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                content_type = self.headers["Content-Type"]
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {content_type}\r\n\r\n".encode() + body
                )
                uids = []
                for part in message.iter_parts():
                    assert part.get_content_type() == "application/dicom"
                    uids.append(str(dcmread(BytesIO(part.get_payload(decode=True))).SOPInstanceUID))
                fake.requests.append((self.path, content_type, uids))
                if fake.status not in (200, 202):
                    self.send_response(fake.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                stored = [u for u in uids if u not in fake.refuse and u not in fake.unlisted]
                failed = [u for u in uids if u in fake.refuse]
                answer: dict[str, Any] = {"00081190": {"vr": "UR", "Value": ["http://x/studies/1"]}}
                if stored:
                    answer["00081199"] = {"vr": "SQ", "Value": [_ref(u) for u in stored]}
                if failed:
                    answer["00081198"] = {
                        "vr": "SQ",
                        "Value": [_ref(u, fake.refuse[u]) for u in failed],
                    }
                content = json.dumps(answer).encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ref(uid: str, reason: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]},
        "00081155": {"vr": "UI", "Value": [uid]},
    }
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


@pytest.fixture
def web() -> Iterator[FakeDicomWeb]:
    fake = FakeDicomWeb()
    yield fake
    fake.stop()


def sender_for(engine: Engine, url: str, clock: Clock | None = None, **destination: Any) -> Sender:
    passwords = {"pacs": destination.pop("password")} if "password" in destination else {}
    d = PacsDestination(name="pacs", dicomweb_url=url, http_timeout=5.0, **destination)
    settings = PacsSettings(destinations=(d,), backoff_base=10.0, backoff_cap=25.0)
    return Sender(settings, engine, clock=clock or Clock(), passwords=passwords)


def test_200_delivers_the_batch_in_one_multipart_request(engine: Engine, web: FakeDicomWeb):
    uids = queue(engine, 5)
    sender = sender_for(engine, web.url)
    assert sender.step() == 5
    assert len(web.requests) == 1
    path, content_type, sent = web.requests[0]
    assert path == "/dicom-web/studies"
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    assert sorted(sent) == sorted(uids)
    rows = state(engine)
    assert all(rows[u].status == "delivered" and rows[u].attempts == 1 for u in uids)
    assert sender.step() == 0 and len(web.requests) == 1


def test_202_delivers_only_what_is_listed_as_stored(engine: Engine, web: FakeDicomWeb):
    uids = queue(engine, 5)
    web.status = 202
    web.refuse = {uids[1]: 0xA700, uids[2]: 0x0122, uids[3]: 0xA900}
    web.unlisted = {uids[4]}
    clock = Clock()
    sender = sender_for(engine, web.url, clock)
    assert sender.step() == 5
    rows = state(engine)
    assert rows[uids[0]].status == "delivered"
    assert (rows[uids[1]].status, rows[uids[1]].last_error) == (
        "pending",
        "STOW-RS refused it: failure reason 0xA700",
    )
    assert T0 + timedelta(seconds=7.5) <= rows[uids[1]].next_attempt_at <= T0 + timedelta(seconds=12.5)
    assert rows[uids[2]].status == "failed" and "0x0122" in rows[uids[2]].last_error  # class not supported
    assert rows[uids[3]].status == "failed" and "0xA900" in rows[uids[3]].last_error
    assert rows[uids[4]].status == "pending" and "not listed as stored" in rows[uids[4]].last_error
    web.status, web.refuse, web.unlisted = 200, {}, set()
    clock.now = T0 + timedelta(seconds=13)
    assert sender.step() == 2
    assert sorted(web.requests[-1][2]) == sorted([uids[1], uids[4]])
    rows = state(engine)
    assert [rows[u].status for u in uids] == ["delivered", "delivered", "failed", "failed", "delivered"]


@pytest.mark.parametrize("status", [409, 503])
def test_an_http_error_retries_the_whole_batch(engine: Engine, web: FakeDicomWeb, status: int):
    uids = queue(engine, 3)
    web.status = status
    clock = Clock()
    sender = sender_for(engine, web.url, clock)
    assert sender.step() == 3
    rows = state(engine)
    assert all(rows[u].status == "pending" and rows[u].attempts == 1 for u in uids)
    assert rows[uids[0]].last_error.startswith(f"STOW-RS answered HTTP {status}")
    web.status = 200
    clock.now += timedelta(minutes=1)
    assert sender.step() == 3
    assert all(r.status == "delivered" and r.attempts == 2 for r in state(engine).values())


def test_a_dropped_connection_and_a_closed_port_are_retried(engine: Engine, web: FakeDicomWeb):
    uids = queue(engine, 2)
    web.drop = True
    clock = Clock()
    sender = sender_for(engine, web.url, clock)
    sender.step()
    rows = state(engine)
    assert all(rows[u].status == "pending" for u in uids)
    assert rows[uids[0]].last_error.startswith("STOW-RS request failed")
    closed = sender_for(engine, f"http://127.0.0.1:{free_port()}/dicom-web", clock)
    clock.now += timedelta(minutes=1)
    closed.step()
    rows = state(engine)
    assert all(rows[u].status == "pending" and rows[u].attempts == 2 for u in uids)
    assert "STOW-RS request failed" in rows[uids[0]].last_error


def test_basic_auth_sends_the_password_and_a_wrong_one_is_retried(engine: Engine, web: FakeDicomWeb):
    uids = queue(engine, 2)
    web.auth = ("xray", "s3cret-pw")
    clock = Clock()
    wrong = sender_for(engine, web.url, clock, username="xray", password_env="PW", password="wrong")  # noqa: S106
    wrong.step()
    rows = state(engine)
    assert rows[uids[0]].status == "pending"
    assert (
        rows[uids[0]].last_error == "STOW-RS answered HTTP 401 Unauthorized (check username and password_env)"
    )
    assert "wrong" not in rows[uids[0]].last_error
    right = sender_for(engine, web.url, clock, username="xray", password_env="PW", password="s3cret-pw")  # noqa: S106
    clock.now += timedelta(minutes=1)
    right.step()
    assert all(r.status == "delivered" for r in state(engine).values())


def test_the_password_comes_from_the_variable_password_env_names():
    from worker.errors import ConfigError
    from worker.pacs.sender import passwords

    d = PacsDestination(name="web", dicomweb_url="http://x/dicom-web", username="u", password_env="PACS_PW")  # noqa: S106
    assert passwords([d], {"PACS_PW": "pw"}) == {"web": "pw"}
    with pytest.raises(ConfigError, match="environment variable PACS_PW is not set"):
        passwords([d], {})


def test_parse_never_counts_a_uid_listed_as_failed_as_stored():
    body = {
        "00081199": {"vr": "SQ", "Value": [_ref("1.2")]},
        "00081198": {"vr": "SQ", "Value": [_ref("1.2", 0x0110)]},
    }
    answer = stow.parse(202, json.dumps(body).encode())
    assert answer.stored == set() and answer.failed == {
        "1.2": ("STOW-RS refused it: failure reason 0x0110", False)
    }
    assert stow.parse(200, b"").stored == set()
    with pytest.raises(stow.StowError, match="not DICOM JSON"):
        stow.parse(200, b"<html>")
