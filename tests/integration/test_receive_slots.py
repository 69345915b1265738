"""``worker.receive`` under attack: connections that never send an association request.

The real receiver on 127.0.0.1; the attacker connects from other loopback addresses
(127.0.0.2, 127.0.0.3), so the per-address limit tells it from the legitimate senders, which
are pynetdicom SCUs on 127.0.0.1 storing a small real DICOM. Idle connections must not take
the senders' slots, the per-address limit closes the extra ones at once, a request must come
within ``request_timeout`` (a silent or trickling one is closed then), the offender is logged
once rather than per connection, and the real association limit still holds.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dicom_factory import gradient, make_dicom
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import ComputedRadiographyImageStorage
from test_receive import _close, _make_cert, _wait, echo, read, receivers, sender, store_all

from worker.config import ReceiveSettings
from worker.receive import Receiver
from worker.receive.admission import MAX_TRACKED, MAX_WAITING, OVER_PEER_LIMIT, Offenders

ATTACKERS = ("127.0.0.2", "127.0.0.3")
RELEASE_RQ = b"\x05\x00" + struct.pack(">L", 4) + b"\0" * 4


@pytest.fixture
def receiver_with(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    """Receivers on free ports of 127.0.0.1 with small limits and timeouts."""
    base = ReceiveSettings(
        port=0, max_associations=2, request_timeout=1, association_timeout=5, idle_timeout=5
    )
    with receivers(base, tmp_path / "inbox") as make:
        yield make


@pytest.fixture
def small_dicom(tmp_path: Path) -> Dataset:
    return read(make_dicom(tmp_path / "small.dcm", gradient()))


def connect_from(source: str, receiver: Receiver) -> socket.socket:
    return socket.create_connection(receiver.address, timeout=5, source_address=(source, 0))


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the receiver closes ``sock`` within ``seconds`` (the socket stays ours)."""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                try:
                    if not sock.recv(65536):
                        return True
                except ConnectionResetError:
                    return True
    return False


class Attacker:
    """Holds ``count`` silent connections open from each of ``sources``, from a thread, and
    opens a new one as soon as the receiver closes one. ``lifetimes``: how long each lasted."""

    def __init__(self, receiver: Receiver, sources: tuple[str, ...], count: int):
        self.receiver, self.sources, self.count = receiver, sources, count
        self.lifetimes: dict[str, list[float]] = {s: [] for s in sources}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Attacker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()

    def _open(self, selector: selectors.BaseSelector, source: str) -> None:
        try:
            sock = connect_from(source, self.receiver)
        except OSError:  # the listen queue full for a moment: the next round tries again
            return
        selector.register(sock, selectors.EVENT_READ, (source, time.monotonic()))

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            while not self._stop.is_set():
                held = [key.data[0] for key in selector.get_map().values()]
                for source in self.sources:
                    for _ in range(self.count - held.count(source)):
                        self._open(selector, source)
                for key, _ in selector.select(0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        ended = not sock.recv(65536)
                    except OSError:
                        ended = True
                    if ended:
                        self.lifetimes[key.data[0]].append(time.monotonic() - key.data[1])
                        selector.unregister(sock)
                        sock.close()
            for key in list(selector.get_map().values()):
                selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]


def association_request(title: str) -> bytes:
    """The A-ASSOCIATE-RQ PDU pynetdicom sends for a C-ECHO, caught by a listener that answers
    nothing."""
    caught: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as server:

        def catch() -> None:
            conn, _ = server.accept()
            with conn:
                caught.append(read_pdu(conn))

        catcher = threading.Thread(target=catch)
        catcher.start()
        ae = sender(title)
        ae.acse_timeout = 2
        assoc = ae.associate("127.0.0.1", server.getsockname()[1], ae_title="XRAY_SCREEN")
        catcher.join(10)
        _close(assoc)
    assert caught and caught[0][0] == 0x01
    return caught[0]


def read_pdu(sock: socket.socket) -> bytes:
    header = _read_exactly(sock, 6)
    return header + _read_exactly(sock, struct.unpack(">L", header[2:])[0])


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def offender_lines(caplog: pytest.LogCaptureFixture, address: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "worker.receive.admission" and f"from {address} " in r.getMessage()
    ]


# -- the tests ---------------------------------------------------------------------------


def test_silent_connections_do_not_take_the_senders_slots(receiver_with, small_dicom, caplog):
    """More silent connections than max_associations (2), from two addresses, reopened as fast
    as they are closed for several request timeouts: every C-ECHO and C-STORE goes through."""
    receiver = receiver_with(max_connections_per_peer=4)
    with Attacker(receiver, ATTACKERS, count=6) as attacker:
        _wait(lambda: receiver.active >= 8, 5)  # 4 per address held, more than the 2 slots
        started, served = time.monotonic(), 0
        # For at least 4 request timeouts, and at least 5 rounds however slow a loaded machine is.
        while time.monotonic() - started < 4 or served < 5:
            assert echo(receiver) == 0
            assert store_all(receiver, [small_dicom]) == [0]
            served += 1
    assert (receiver.writer.folder / f"{small_dicom.SOPInstanceUID}.dcm").exists()
    for source in ATTACKERS:
        lifetimes = attacker.lifetimes[source]
        closed_at_once = [t for t in lifetimes if t < 0.5]  # over the 4 per address
        timed_out = [t for t in lifetimes if t >= 0.5]  # no request within request_timeout (1 s)
        assert len(closed_at_once) > 10, source
        assert len(timed_out) >= 8 and max(timed_out) < 2.5, (source, sorted(timed_out)[-3:])
        # One warning per address, with counts, however many connections were turned away...
        lines = offender_lines(caplog, source)
        assert len(lines) == 1 and OVER_PEER_LIMIT in lines[0], lines
    # ...and no line per connection.
    assert not [r for r in caplog.records if "at 127.0.0.2:" in r.getMessage()]


def test_connections_over_the_per_peer_limit_are_closed_at_once(receiver_with, caplog):
    receiver = receiver_with(max_connections_per_peer=3, request_timeout=5)
    held = [connect_from("127.0.0.2", receiver) for _ in range(3)]
    _wait(lambda: receiver.active == 3, 1)
    extra = [connect_from("127.0.0.2", receiver) for _ in range(2)]
    try:
        assert all(closed_within(sock, 0.5) for sock in extra)
        assert not any(closed_within(sock, 0.2) for sock in held)
        assert echo(receiver) == 0  # from 127.0.0.1: another address, not limited
        # One of the three hangs up: its place is free at once, not after request_timeout.
        held.pop().close()
        _wait(lambda: receiver.active == 2, 1)
        held.append(connect_from("127.0.0.2", receiver))
        assert not closed_within(held[-1], 0.3)
    finally:
        for sock in held + extra:
            sock.close()
    lines = offender_lines(caplog, "127.0.0.2")
    assert len(lines) == 1 and f"1 {OVER_PEER_LIMIT}" in lines[0], lines  # the second one: counted


def test_when_too_many_wait_for_their_request_the_oldest_makes_room(receiver_with):
    """From many addresses (here one, with a high per-address limit), at most MAX_WAITING
    connections wait at once: the next closes the oldest, whose thread ends at once too."""
    receiver = receiver_with(max_connections_per_peer=MAX_WAITING + 10, request_timeout=10)
    waiting = []
    try:
        for _ in range(MAX_WAITING):
            waiting.append(connect_from("127.0.0.2", receiver))
        _wait(lambda: receiver.active == MAX_WAITING, 5)
        waiting.append(connect_from("127.0.0.2", receiver))
        assert closed_within(waiting[0], 1)
        assert not any(closed_within(sock, 0.01) for sock in waiting[1:])
        _wait(lambda: receiver.active == MAX_WAITING, 1)  # its thread is gone too
        assert echo(receiver) == 0
    finally:
        for sock in waiting:
            sock.close()


def test_a_request_within_the_request_timeout_is_served_and_a_late_one_is_not(receiver_with):
    receiver = receiver_with(request_timeout=2)
    request = association_request("SLOW_SCU")
    # Slow but in time: 1.5 s of the 2, in four pieces.
    with connect_from("127.0.0.1", receiver) as sock:
        time.sleep(0.5)
        for i in range(4):
            sock.sendall(request[i * len(request) // 4 : (i + 1) * len(request) // 4])
            time.sleep(0.25)
        assert read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
        sock.sendall(RELEASE_RQ)
        assert read_pdu(sock)[0] == 0x06  # A-RELEASE-RP
    # A byte every 0.2 s (40 s for the whole request): closed when its 2 s are up.
    with connect_from("127.0.0.1", receiver) as sock:
        started = time.monotonic()
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            if closed_within(sock, 0.2):
                break
        assert 1.5 < time.monotonic() - started < 3.5
    assert echo(receiver) == 0


def test_a_silent_tls_client_holds_back_nobody(receiver_with, tmp_path: Path):
    """The TLS handshake is done in the connection's own thread: clients that connect and stay
    silent do not hold the accept loop, and are closed when their request_timeout is up."""
    ca, server = _make_cert(tmp_path, "ca"), _make_cert(tmp_path, "server")
    receiver = receiver_with(tls_cert=str(server[0]), tls_key=str(server[1]), request_timeout=3)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca[0]))
    context.check_hostname = False
    with connect_from("127.0.0.2", receiver) as silent, connect_from("127.0.0.3", receiver) as other:
        started = time.monotonic()
        assoc = sender().associate(*receiver.address, ae_title="XRAY_SCREEN", tls_args=(context, None))
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        assert time.monotonic() - started < 2
        assert closed_within(silent, 4) and closed_within(other, 1)


def test_the_association_limit_still_holds(receiver_with):
    receiver = receiver_with(max_associations=2, max_connections_per_peer=8)
    answers: list[object] = []
    handlers = [(evt.EVT_ACSE_RECV, lambda event: answers.append(event.primitive))]
    with Attacker(receiver, ATTACKERS, count=3):
        ae = sender(contexts=[(ComputedRadiographyImageStorage, ["1.2.840.10008.1.2.1"])])
        first, second = (ae.associate(*receiver.address, ae_title="XRAY_SCREEN") for _ in range(2))
        assert first.is_established and second.is_established
        third = ae.associate(*receiver.address, ae_title="XRAY_SCREEN", evt_handlers=handlers)
        assert third.is_rejected and not third.is_established
        rejection = answers[-1]
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (2, 3, 2)  # type: ignore[attr-defined]
        _close(third)
        first.release()
        _wait(lambda: receiver.admission.associations == 1, 5)
        assert echo(receiver) == 0  # a slot is free again
        second.release()


def test_offenders_are_logged_once_per_address_and_interval(caplog):
    now = [0.0]
    offenders = Offenders(interval=300, clock=lambda: now[0])
    for _ in range(50):
        offenders.note("10.0.0.66", OVER_PEER_LIMIT)
    offenders.note("10.0.0.66", "closed before an association request")
    offenders.note("10.0.0.77", OVER_PEER_LIMIT)
    offenders.flush()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "connections from 10.0.0.66 turned away",
        "connections from 10.0.0.77 turned away",
    ]
    now[0] = 301
    offenders.flush()
    assert "49 over max_connections_per_peer" in caplog.records[-1].getMessage()
    assert "1 closed before an association request" in caplog.records[-1].getMessage()
    assert len(caplog.records) == 3  # 10.0.0.77 had nothing more
    for i in range(10_000):  # many addresses: a bounded table, the rest counted together
        offenders.note(f"10.1.{i // 256}.{i % 256}", OVER_PEER_LIMIT)
    lines = [r.getMessage() for r in caplog.records[3:]]
    assert len(lines) <= MAX_TRACKED + 1 and "other addresses" in lines[-1]
