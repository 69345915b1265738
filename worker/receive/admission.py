"""Who gets a connection, and for how long: the receiver stays reachable when a peer opens
connections and never sends an association request.

pynetdicom counts every open connection against ``AE.maximum_associations`` (``acse.py``
counts the acceptor threads alive when a request arrives): a few TCP connections that stay
silent hold every slot until ``acse_timeout``, and each legitimate sender is rejected
meanwhile. ``Admission`` counts instead, from the accept loop (``AdmittingServer``) to the
association's end:

- **per peer address**: at most ``max_connections_per_peer`` connections open at once; one
  more is closed in the accept loop, before a thread, a TLS handshake or a byte read;
- **the request**: a connection has ``request_timeout`` seconds from its accept to deliver its
  whole A-ASSOCIATE-RQ, TLS handshake included. A watchdog shuts the socket of one that has
  not, so a request trickled a byte at a time ends as surely as a silent one. At most
  ``MAX_WAITING`` connections wait for their request at once; a new one closes the oldest;
- **slots**: only associations whose request arrived and was allowed hold one of the
  ``max_associations`` slots (``take_slot``); one more is rejected "local limit exceeded".

What is turned away is logged once per peer address and ``REPORT_INTERVAL``, with its counts
(``Offenders``), never once per connection; addresses only, no patient data.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from worker.config import ReceiveSettings
from worker.receive.peers import normal_address

log = logging.getLogger(__name__)

# Connections waiting for their association request at once, from every address together.
MAX_WAITING = 64
# Seconds between two log lines about one peer address.
REPORT_INTERVAL = 300.0
# Peer addresses whose counts are kept between two lines; more are counted as "other addresses".
MAX_TRACKED = 256
# Reasons counted per address; more are counted as "other".
MAX_REASONS = 8
# Connections the kernel queues until the accept loop takes them (socketserver's default: 5).
LISTEN_BACKLOG = 128

OVER_PEER_LIMIT = "over max_connections_per_peer, closed at once"
NO_REQUEST = "closed before an association request"
OVERDUE = "no association request within request_timeout"
CROWDED_OUT = f"closed for a newer one: {MAX_WAITING} connections were waiting for their request"


@dataclass(eq=False)
class Connection:
    """One accepted connection, from the accept loop to its close."""

    host: str
    sock: Any  # what the watchdog shuts: the TLS socket once wrapped
    deadline: float
    waiting: bool = True  # its association request has not arrived
    overdue: str = ""  # why the watchdog closed it
    slot: bool = False
    closed: bool = False
    end: Callable[[], None] = field(default=lambda: None)  # ends its thread's wait for the request


class Offenders:
    """Connections turned away, counted per peer address and reason. The first one of an
    address is logged at once; the rest in one line per address and ``interval``."""

    def __init__(self, interval: float = REPORT_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._tallies: dict[str, _Tally] = {}

    def note(self, host: str, reason: str) -> None:
        now = self._clock()
        with self._lock:
            tally = self._tallies.get(host)
            if tally is None:
                self._forget_quiet(now)
                if len(self._tallies) >= MAX_TRACKED:
                    host = "other addresses"
                tally = self._tallies.setdefault(host, _Tally(next_line=now))
            key = reason if reason in tally.counts or len(tally.counts) < MAX_REASONS else "other"
            tally.counts[key] += 1
            lines = self._due(now, only=host)
        _log(lines, self.interval)

    def flush(self, every: bool = False) -> None:
        """Log the counts of every address whose interval has passed (``every``: of all)."""
        with self._lock:
            lines = self._due(self._clock(), every=every)
        _log(lines, self.interval)

    def _due(self, now: float, *, only: str | None = None, every: bool = False) -> _Lines:
        """Under the lock: the lines due now, their counts reset."""
        lines = []
        for host, tally in self._tallies.items():
            if (only is None or host == only) and tally.counts and (every or now >= tally.next_line):
                lines.append((host, tally.counts))
                tally.counts = Counter()
                tally.next_line = now + self.interval
        return lines

    def _forget_quiet(self, now: float) -> None:
        """Drop the addresses with nothing to report whose interval has passed."""
        for host in [h for h, t in self._tallies.items() if not t.counts and now >= t.next_line]:
            del self._tallies[host]


@dataclass
class _Tally:
    next_line: float
    counts: Counter[str] = field(default_factory=Counter)


_Lines = list[tuple[str, Counter[str]]]


def _log(lines: _Lines, interval: float) -> None:
    for host, counts in lines:
        what = "; ".join(f"{n} {reason}" for reason, n in counts.most_common())
        log.warning(
            "connections from %s turned away: %s (one line per address every %.0f s at most)",
            host,
            what,
            interval,
        )


class Admission:
    """The receiver's connections, counted per address, per wait for a request and per slot.
    Thread-safe; ``start()`` runs the watchdog, ``stop()`` ends it."""

    def __init__(
        self,
        settings: ReceiveSettings,
        offenders: Offenders | None = None,
        turned_away: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.request_timeout = settings.request_timeout
        self.max_associations = settings.max_associations
        self.max_per_peer = settings.max_connections_per_peer
        self.offenders = offenders or Offenders(clock=clock)
        self._turned_away = turned_away
        self._clock = clock
        self._lock = threading.Lock()
        self._per_peer: Counter[str] = Counter()
        self._waiting: dict[Connection, None] = {}  # oldest first: deadlines in accept order
        self._by_socket: dict[Any, Connection] = {}
        self._slots = 0
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    # -- the connection's life --------------------------------------------------------

    def admit(self, sock: Any, address: str) -> bool:
        """A connection was accepted: False (close it at once) when its address has
        ``max_connections_per_peer`` open already."""
        host = normal_address(address)
        crowded_out = None
        with self._lock:
            if self._per_peer[host] >= self.max_per_peer:
                admitted = False
            else:
                admitted = True
                self._per_peer[host] += 1
                if len(self._waiting) >= MAX_WAITING:
                    crowded_out = next(iter(self._waiting))
                    self._overdue(crowded_out, CROWDED_OUT)
                conn = Connection(host, sock, self._clock() + self.request_timeout)
                self._waiting[conn] = None
                self._by_socket[sock] = conn
        if crowded_out is not None:
            _shut(crowded_out)
        if not admitted:
            self.offenders.note(host, OVER_PEER_LIMIT)
            self._turned_away()
        return admitted

    def connection(self, sock: Any) -> Connection:
        """The connection of ``sock`` (as ``admit`` or ``wrapped`` saw it)."""
        with self._lock:
            return self._by_socket[sock]

    def wrapped(self, conn: Connection, sock: Any) -> None:
        """``conn`` goes on over ``sock`` (TLS): the watchdog shuts that one now."""
        with self._lock:
            self._by_socket.pop(conn.sock, None)
            conn.sock = sock
            self._by_socket[sock] = conn

    def requested(self, conn: Connection) -> bool:
        """Its association request arrived: it waits no more. False when it came too late."""
        with self._lock:
            if conn.overdue:
                return False
            self._waiting.pop(conn, None)
            conn.waiting = False
            return True

    def take_slot(self, conn: Connection) -> bool:
        """One of the ``max_associations`` slots for ``conn``'s association; False when all are
        taken (the request is then rejected)."""
        with self._lock:
            if self._slots >= self.max_associations:
                return False
            self._slots += 1
            conn.slot = True
            return True

    def closed(self, conn: Connection, rejected: str = "") -> None:
        """``conn`` ended (its thread is done with its socket, which is closed): its address,
        its slot and its place in the queue are free again.
        A connection that never became an association counts against its address in the
        log: ``rejected`` says why its request was rejected, if it was."""
        with self._lock:
            if conn.closed:
                return
            conn.closed = True
            self._waiting.pop(conn, None)
            self._by_socket.pop(conn.sock, None)
            self._per_peer[conn.host] -= 1
            if not self._per_peer[conn.host]:
                del self._per_peer[conn.host]
            if conn.slot:
                self._slots -= 1
        # Closed whatever path pynetdicom's state machine took: some leave the socket open.
        with contextlib.suppress(OSError):
            conn.sock.close()
        if conn.overdue or conn.waiting or rejected:
            self.offenders.note(conn.host, conn.overdue or rejected or NO_REQUEST)

    def remaining(self, conn: Connection) -> float:
        """Seconds left to ``conn`` to deliver its request."""
        return conn.deadline - self._clock()

    @property
    def associations(self) -> int:
        """Slots taken now."""
        return self._slots

    # -- the watchdog -----------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._watchdog = threading.Thread(target=self._watch, name="receive-watchdog", daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(10)
            self._watchdog = None
        self.offenders.flush(every=True)

    def _watch(self) -> None:
        """Shut the connections whose request is overdue, and log the counts that are due."""
        while True:
            with self._lock:
                now = self._clock()
                overdue = []
                while self._waiting and next(iter(self._waiting)).deadline <= now:
                    overdue.append(self._overdue(next(iter(self._waiting)), OVERDUE))
                oldest = next(iter(self._waiting), None)
                wait = oldest.deadline - now if oldest else self.request_timeout
            for conn in overdue:
                _shut(conn)
            self.offenders.flush()
            if self._stop.wait(max(wait, 0.01)):
                return

    def _overdue(self, conn: Connection, why: str) -> Connection:
        """Under the lock: ``conn`` waits no more, and will be shut."""
        del self._waiting[conn]
        conn.overdue = why
        return conn


def _shut(conn: Connection) -> None:
    """End ``conn`` now: its reads return, whatever they were waiting for, and its thread
    stops waiting for the request. The socket itself is closed by its own thread (``closed``),
    so nobody reads a closed descriptor."""
    with contextlib.suppress(OSError):  # already gone
        socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)  # not SSLSocket's: no TLS state touched
    conn.end()


class AdmittingServer(ThreadedAssociationServer):
    """pynetdicom's server with ``Admission`` at its door: the address limit in the accept
    loop (``verify_request``), and the TLS handshake in the connection's own thread, within
    its request deadline (pynetdicom does it in the accept loop, where one silent client
    holds every other one back)."""

    request_queue_size = LISTEN_BACKLOG

    def __init__(self, *args: Any, admission: Admission, **kwargs: Any):
        self.admission = admission
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        return self.socket.accept()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.admission.admit(request, str(client_address[0]))

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)  # a thread: process_request_thread
        except BaseException:
            self.admission.closed(self.admission.connection(request))
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        conn = self.admission.connection(request)
        try:
            if self.ssl_context is not None:
                request = self._handshake(conn, self.ssl_context)
            # The association's thread takes the connection from here; its end calls closed.
            self.finish_request(request, client_address)
        except Exception:  # a failed handshake, or a connection gone before its association
            self.admission.closed(conn)
            self.shutdown_request(conn.sock)

    def _handshake(self, conn: Connection, context: ssl.SSLContext) -> ssl.SSLSocket:
        raw = conn.sock
        raw.settimeout(max(self.admission.remaining(conn), 0.01))
        tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        self.admission.wrapped(conn, tls)
        if conn.overdue:  # the watchdog shut the raw socket as it was being wrapped
            raise OSError("no TLS handshake within request_timeout")
        tls.do_handshake()
        return tls
