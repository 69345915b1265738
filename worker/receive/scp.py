"""The DICOM Storage SCP: associations in, instances into the inbox.

``Receiver`` answers C-ECHO, and C-STORE for CR and DX images (and Secondary Capture when
``[receive] secondary_capture``) in every transfer syntax ``worker.decode`` reads; other SOP
classes and syntaxes get no accepted presentation context. Each instance is handed to
``InboxWriter.store`` (worker/receive/store.py) and answered Success only once it is on disk
for good; ``watch`` then screens it like any other file in the inbox.

Who gets a connection and a slot, and for how long, is ``Admission``'s (worker/receive/
admission.py): connections that never send a request do not hold a legitimate sender's slot.

A log line per association (calling AE, address, instances stored and refused, seconds, how
it ended) and per refused instance; never a patient attribute. Connections that never became
an association are counted per address instead (``Offenders``), not logged one by one.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from worker.config import ReceiveSettings
from worker.errors import ConfigError
from worker.receive.admission import MAX_WAITING, Admission, AdmittingServer, Connection
from worker.receive.limits import BoundedBuffer, bound_data_set, bound_socket
from worker.receive.peers import AllowedPeers, tls_context
from worker.receive.store import OUT_OF_RESOURCES, SUCCESS, InboxWriter, Refused, file_name

log = logging.getLogger(__name__)

# The transfer syntaxes worker/decode/dicom.py decodes with pydicom and the installed
# pylibjpeg plugins (tests/integration/test_receive.py checks each has a decoder).
TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
)
XRAY_STORAGE: tuple[UID, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
# A PDU may be longer than max_pdu only for the association request (many contexts).
MIN_PDU_LIMIT = 1 << 20
# The ending of a connection closed in the accept loop (over max_connections_per_peer).
TURNED_AWAY = "turned away"


def storage_classes(settings: ReceiveSettings) -> tuple[UID, ...]:
    return XRAY_STORAGE + ((SecondaryCaptureImageStorage,) if settings.secondary_capture else ())


@dataclass
class _Association:
    """What one connection did, for its log line."""

    address: str
    connection: Connection | None = None
    started: float = field(default_factory=time.monotonic)
    title: str = ""
    stored: int = 0
    refused: int = 0
    note: str = ""


class ReceiverObserver:
    """What the receiver reports as it goes (its metrics: ``worker/metrics/receiver.py``); this
    default does nothing. Called from the associations' threads."""

    def stored(self, size: int) -> None:
        """An instance of ``size`` bytes was stored (and answered Success)."""

    def refused(self, status: int) -> None:
        """An instance was refused with DIMSE ``status``."""

    def closed(self, ending: str) -> None:
        """A connection ended: released, aborted, rejected, or another ending of ``_closed``."""


class Receiver:
    """A Storage SCP on ``settings.host:port`` writing into ``writer``'s folder.

    ``start()`` listens (``address`` is then the bound address), ``run()`` waits until
    ``stop()``; ``stop()`` closes the port, lets the associations in progress finish for up
    to ``grace`` seconds, and aborts the rest: what they had not been answered Success for
    is sent again by the peer.
    """

    def __init__(
        self, settings: ReceiveSettings, writer: InboxWriter, observer: ReceiverObserver | None = None
    ):
        self.settings = settings
        self.writer = writer
        self.observer = observer or ReceiverObserver()
        self.peers = AllowedPeers.parse(settings.allowed_aets)
        self.ssl_context = tls_context(settings)
        self.grace = settings.association_timeout
        self.admission = Admission(settings, turned_away=lambda: self.observer.closed(TURNED_AWAY))
        self._stop = threading.Event()
        self._server: AdmittingServer | None = None
        self._open: dict[Any, _Association] = {}
        self._lock = threading.Lock()
        self.ae = self._application_entity()

    def _application_entity(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_pdu_size = s.max_pdu
        ae.acse_timeout = s.request_timeout  # for the request; association_timeout once it came
        ae.network_timeout = s.idle_timeout
        ae.dimse_timeout = s.idle_timeout
        # pynetdicom counts every connection open (requested or not) against this: a backstop
        # above Admission's counts, which hold the real limit (max_associations).
        ae.maximum_associations = s.max_associations + MAX_WAITING
        ae.add_supported_context(Verification)
        for sop_class in storage_classes(s):
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    # -- running ------------------------------------------------------------------

    def start(self) -> None:
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_FSM_TRANSITION, self._on_transition),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        address = (self.settings.host, self.settings.port)
        try:
            server = self.ae.make_server(
                address,
                evt_handlers=handlers,
                ssl_context=self.ssl_context,
                server_class=AdmittingServer,
                admission=self.admission,
            )
        except OSError as exc:
            where = f"{address[0]}:{address[1]}"
            raise ConfigError(f"[receive] cannot listen on {where}: {exc.strerror or exc}") from None
        self.ae._servers.append(server)  # as AE.start_server does: server.shutdown() removes it
        self.admission.start()
        threading.Thread(target=server.serve_forever, name="receive-accept", daemon=True).start()
        self._server = server
        log.info(
            "receiving as %s on %s:%d%s into %s (%s)",
            self.settings.ae_title,
            *self.address,
            " (TLS)" if self.ssl_context else "",
            self.writer.folder,
            ", ".join(c.name for c in storage_classes(self.settings)),
        )

    @property
    def active(self) -> int:
        """Connections open now."""
        return len(self._open)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def run(self) -> None:
        if self._server is None:
            self.start()
        self._stop.wait()
        self._shutdown()

    def stop(self) -> None:
        self._stop.set()

    def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        active = server.active_associations
        server.shutdown()
        deadline = time.monotonic() + self.grace
        for assoc in active:
            assoc.join(max(0.0, deadline - time.monotonic()))
            if assoc.is_alive():
                assoc.abort()
        self.admission.stop()
        log.info("stopped receiving")

    # -- association events -------------------------------------------------------

    def _on_open(self, event: Any) -> None:
        assoc = event.assoc
        host, port = event.address[:2]
        conn = self.admission.connection(assoc.dul.socket.socket)
        conn.end = functools.partial(_stop_waiting, assoc)  # when the watchdog shuts it
        stats = _Association(address=f"{host}:{port}", connection=conn)
        with self._lock:
            self._open[assoc] = stats
        # Until the request comes, a read waits request_timeout at most (_on_requested).
        bound_socket(assoc, max(self.settings.max_pdu, MIN_PDU_LIMIT) + 6, self.settings.request_timeout)
        bound_data_set(assoc, self.settings.max_instance_bytes)
        run = assoc.run

        def run_then_log() -> None:  # the thread's end: its line, or its count (_closed)
            try:
                run()
            finally:
                self._closed(assoc)

        assoc.run = run_then_log

    def _on_transition(self, event: Any) -> None:
        # Sta2: waiting for the request. Leaving it for anything but Sta3 (the request came):
        # the peer closed, or sent something else. pynetdicom would wait request_timeout still.
        if event.current_state == "Sta2" and event.next_state != "Sta3":
            _stop_waiting(event.assoc)

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        stats = self._stats(assoc)
        stats.title = str(assoc.requestor.primitive.calling_ae_title).strip()
        conn = stats.connection
        if conn is None or not self.admission.requested(conn):  # the watchdog closed it meanwhile
            assoc.acse.send_abort(0x02)  # marks it aborted: pynetdicom negotiates no further
            assoc.kill()
            return
        assoc.acse_timeout = self.settings.association_timeout
        assoc.dul.socket.socket.settimeout(self.settings.idle_timeout)
        if not self.peers.allows(stats.title, conn.host):
            stats.note = "calling AE title not allowed from this address"
            assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, by the user: calling AE not recognised
            assoc.kill()
        elif not self.admission.take_slot(conn):
            stats.note = f"max_associations ({self.settings.max_associations}) in progress"
            assoc.acse.send_reject(0x02, 0x03, 0x02)  # transient, by the provider: local limit exceeded
            assoc.kill()

    def _on_accepted(self, event: Any) -> None:
        assoc = event.assoc
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        refused = sorted({UID(cx.abstract_syntax).name for cx in assoc.rejected_contexts} - accepted)
        if refused:  # SOP classes, or transfer syntaxes, not taken
            what = "no presentation context accepted" if not accepted else "presentation contexts refused"
            self._stats(assoc).note = f"{what}: {', '.join(refused[:5])}"

    def _on_echo(self, event: Any) -> int:
        return SUCCESS

    def _on_store(self, event: Any) -> int:
        stats = self._stats(event.assoc)
        data_set = event.request.DataSet
        if isinstance(data_set, BoundedBuffer) and data_set.overflowed:
            return self._refuse(
                stats,
                event,
                Refused(
                    OUT_OF_RESOURCES,
                    f"instance of {data_set.received} bytes is over max_instance_bytes "
                    f"({self.settings.max_instance_bytes})",
                ),
            )
        preamble = b"\0" * 128 + b"DICM" + _encoded_file_meta(event.file_meta)
        body = data_set.getbuffer()
        try:
            self.writer.store((preamble, body))
        except Refused as refusal:
            return self._refuse(stats, event, refusal)
        stats.stored += 1
        self.observer.stored(len(preamble) + body.nbytes)
        return SUCCESS

    def _refuse(self, stats: _Association, event: Any, refusal: Refused) -> int:
        stats.refused += 1
        self.observer.refused(refusal.status)
        try:
            what = file_name(event.request.AffectedSOPInstanceUID)
        except Refused:
            what = "an instance"
        log.warning(
            "refused %s from %s at %s: 0x%04X %s",
            what,
            stats.title or "?",
            stats.address,
            refusal.status,
            refusal.reason,
        )
        return refusal.status

    # -- bookkeeping --------------------------------------------------------------

    def _stats(self, assoc: Any) -> _Association:
        with self._lock:
            return self._open.setdefault(assoc, _Association(address="?"))

    def _closed(self, assoc: Any) -> None:
        with self._lock:
            stats = self._open.pop(assoc, None)
        if stats is None:
            return
        seconds = time.monotonic() - stats.started
        if assoc.is_rejected:
            ending = "rejected"
        elif assoc.is_released:
            ending = "released"
        elif assoc.is_aborted:
            ending = "aborted"
        elif not stats.title:
            ending = "closed before an association request"
        else:
            ending = "connection lost or timed out"
        self.observer.closed(ending)
        conn = stats.connection
        if conn is not None:
            rejected = f"rejected: {stats.note}, as {stats.title!r}" if assoc.is_rejected else ""
            self.admission.closed(conn, rejected)
            if conn.waiting or conn.overdue or rejected:  # no association: counted per address
                return
        note = f"; {stats.note}" if stats.note else ""
        line = "association from %s at %s: %d stored, %d refused, %.1f s, %s%s"
        args = (stats.title or "?", stats.address, stats.stored, stats.refused, seconds, ending, note)
        level = logging.INFO if ending == "released" and not stats.refused and not note else logging.WARNING
        log.log(level, line, *args)


def _stop_waiting(assoc: Any) -> None:
    """The association stops waiting for its request at once: None is what pynetdicom's
    wait (``receive_pdu``) returns when it times out, and the association then ends."""
    assoc.dul.to_user_queue.put(None)


def _encoded_file_meta(file_meta: Any) -> bytes:
    from pynetdicom.dsutils import encode_file_meta

    return encode_file_meta(file_meta)
