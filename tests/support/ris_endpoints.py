"""The RIS and the EHR as the tests meet them, independent of our code: an MLLP listener built on
python-hl7's asyncio server (``hl7.mllp.start_hl7_server``) and a FHIR endpoint on
``http.server`` that validates every Bundle with fhir.resources (R4B) and implements conditional
create. Both run in a thread on 127.0.0.1 and count what they took."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import hl7
from fhir.resources.R4B.bundle import Bundle
from hl7.mllp import start_hl7_server

# What the listener answers a message: an MSA-1 code ("AA", "AE", "AR"), "garbage" (an MLLP
# block that is not HL7), "wrong" (AA for another control id), "silent" (no answer), "close"
# (the connection closed instead of an answer).
Reply = str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MllpListener:
    """python-hl7's MLLP server on ``port``: parses every message with python-hl7, keeps it, and
    answers what ``reply(message)`` says; ``acked`` counts the AAs sent per control id."""

    def __init__(
        self,
        port: int | None = None,
        reply: Callable[[hl7.Message], Reply] = lambda m: "AA",
        tls: ssl.SSLContext | None = None,
    ):
        self.port = port or free_port()
        self.reply = reply
        self.tls = tls
        self.received: list[hl7.Message] = []
        self.acked: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> MllpListener:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_hl7_server(self._client, "127.0.0.1", self.port, encoding="utf-8", ssl=self.tls), self._loop
        )
        self._server = future.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def control_ids(self) -> list[str]:
        with self._lock:
            return [str(m.segment("MSH")[10]) for m in self.received]

    async def _client(self, reader: Any, writer: Any) -> None:
        try:
            while True:
                message = await reader.readmessage()
                with self._lock:
                    self.received.append(message)
                reply = self.reply(message)
                control = str(message.segment("MSH")[10])
                if reply == "silent":
                    continue
                if reply == "close":
                    break
                if reply == "garbage":
                    writer.writeblock(b"HELLO, THIS IS NOT HL7")
                elif reply == "wrong":
                    writer.writemessage(_ack(message, "AA", acked="SOMEONE-ELSE"))
                else:
                    if reply == "AA":  # counted before it leaves: the sender may act on it at once
                        with self._lock:
                            self.acked[control] += 1
                    writer.writemessage(_ack(message, reply, acked=control))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _ack(message: hl7.Message, code: str, *, acked: str) -> hl7.Message:
    """python-hl7's ACK of ``message`` with MSA-1 ``code``, acknowledging control id ``acked``."""
    ack = message.create_ack(code, message_id=f"ACK-{acked}"[:20])
    ack.segment("MSA")[2] = acked
    if code != "AA":
        ack.segment("MSA").append(f"the test said {code}")
    return hl7.parse(str(ack))


def self_signed(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 made with openssl, and a server context holding it."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


class FhirEndpoint:
    """A FHIR server's transaction endpoint: each POST's Bundle validated with fhir.resources
    (R4B), each entry's ``ifNoneExist`` honoured (the same identifier creates nothing twice).
    ``statuses``: answers to give first, in order (e.g. [503, 400]), before the real ones;
    ``token``: the bearer token it demands, if any."""

    def __init__(self, statuses: list[int] | None = None, token: str = ""):
        self.statuses = list(statuses or [])
        self.token = token
        self.posts = 0
        self.created: Counter[str] = Counter()  # resourceType -> created
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}  # (type, condition) -> resource
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, answer = endpoint.handle(self.headers, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FhirEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.posts += 1
            if self.statuses:
                status = self.statuses.pop(0)
                return status, outcome(f"the test answers {status}")
            if self.token and headers.get("Authorization") != f"Bearer {self.token}":
                return 401, outcome("no or a wrong bearer token")
            if headers.get("Content-Type") != "application/fhir+json":
                return 415, outcome(f"Content-Type {headers.get('Content-Type')}")
            try:
                bundle = Bundle.model_validate(json.loads(body))
            except ValueError as exc:
                return 400, outcome(f"not a valid Bundle: {str(exc)[:200]}")
            if bundle.type != "transaction":
                return 400, outcome("not a transaction")
            answers = []
            for entry in bundle.entry or []:
                resource = entry.resource.model_dump(mode="json", exclude_none=True)
                key = (resource["resourceType"], entry.request.ifNoneExist or "")
                if key[1] and key in self.resources:
                    answers.append({"response": {"status": "200 OK"}})
                    continue
                self.resources[key] = resource
                self.created[key[0]] += 1
                answers.append({"response": {"status": "201 Created"}})
            return 200, {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}


def outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }
