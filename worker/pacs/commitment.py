"""Storage commitment (Push Model): asking a PACS to keep what it stored, and hearing its answer.

After the C-STOREs of a batch the sender records the batch's rows as ``delivered`` with a new
Transaction UID, then sends one N-ACTION (Action Type 1) naming every instance. The PACS
answers later with an N-EVENT-REPORT (Event Type 1: all committed; 2: some failed): usually
on a new association to our Storage Commitment SCP (``CommitmentListener``, on
``[pacs] commitment_host:commitment_port``), sometimes on the request's own association
(``Sender`` hands the same ``on_report`` to it). ``record`` turns the report into
``committed`` rows, and sends the failed ones back to ``pending``. A report that never comes
is handled by the sender: after ``commitment_timeout`` those rows are sent again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine

from worker.config import PacsDestination, PacsSettings
from worker.db import outbox
from worker.errors import ConfigError

log = logging.getLogger(__name__)

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NO_SUCH_EVENT_TYPE = 0x0113


@dataclass(frozen=True)
class Report:
    """What an N-EVENT-REPORT says of one commitment request."""

    transaction_uid: str
    committed: tuple[str, ...]
    failed: dict[str, str]  # SOP Instance UID -> why


def request(transaction_uid: str, instances: Sequence[tuple[str, str]]) -> Dataset:
    """The N-ACTION's Action Information for (SOP Class UID, SOP Instance UID) pairs."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def parse(event_type: int, info: Dataset) -> Report:
    """The report in an N-EVENT-REPORT's Event Information (``ValueError`` when malformed)."""
    if event_type not in (1, 2):
        raise ValueError(f"event type {event_type} is not a storage commitment result")
    uid = str(info.get("TransactionUID", "") or "")
    if not uid:
        raise ValueError("no Transaction UID")
    committed = tuple(str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", []))
    failed = {
        str(
            i.ReferencedSOPInstanceUID
        ): f"storage commitment failed: reason 0x{int(i.get('FailureReason', 0x0110)):04X}"
        for i in info.get("FailedSOPSequence", [])
    }
    return Report(uid, committed, failed)


def record(
    engine: Engine, destinations: Sequence[PacsDestination], report: Report, *, delay: float
) -> tuple[int, int]:
    """Mark the report's instances, for the destinations it can come from. Returns (committed,
    sent back to pending)."""
    totals = [0, 0]
    with engine.begin() as conn:
        for destination in destinations:
            done, back = outbox.mark_committed(
                conn, destination.name, report.transaction_uid, report.committed, report.failed, delay=delay
            )
            totals[0] += done
            totals[1] += back
    return totals[0], totals[1]


class ReportHandler:
    """``evt.EVT_N_EVENT_REPORT``'s handler, for the listener's associations and the sender's."""

    def __init__(self, settings: PacsSettings, engine: Engine, retry_delay: Callable[[], float]):
        self.settings = settings
        self.engine = engine
        self.retry_delay = retry_delay

    def __call__(self, event: Any) -> tuple[int, Dataset | None]:
        assoc = event.assoc
        peer = assoc.requestor if assoc.is_acceptor else assoc.acceptor
        title = str(peer.ae_title).strip()
        sources = [d for d in self.settings.destinations if d.storage_commitment and d.ae_title == title]
        if not sources:
            log.warning(
                "storage commitment report from %s, which is no destination with storage_commitment", title
            )
            return PROCESSING_FAILURE, None
        request = event.request
        try:
            report = parse(int(request.EventTypeID), event.event_information)
        except (ValueError, AttributeError, KeyError) as exc:
            log.warning("storage commitment report from %s refused: %s", title, exc)
            return NO_SUCH_EVENT_TYPE if "event type" in str(exc) else PROCESSING_FAILURE, None
        try:
            committed, back = record(self.engine, sources, report, delay=self.retry_delay())
        except Exception as exc:  # the database: the PACS may report again; else the timeout resends
            log.warning("storage commitment report from %s not recorded: %s", title, exc)
            return PROCESSING_FAILURE, None
        log.info(
            "storage commitment from %s: %d committed, %d failed and queued again (%d and %d in the report)",
            title,
            committed,
            back,
            len(report.committed),
            len(report.failed),
        )
        return SUCCESS, None


class CommitmentListener:
    """Our Storage Commitment SCP: takes the N-EVENT-REPORTs a PACS sends on new associations."""

    def __init__(self, settings: PacsSettings, handler: ReportHandler):
        self.settings = settings
        self.handler = handler
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> None:
        ae = AE(ae_title=self.settings.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.settings.association_timeout
        ae.add_supported_context(Verification)
        # The PACS requests the association and plays the SCP role of the SOP class.
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        address = (self.settings.commitment_host, self.settings.commitment_port)
        try:
            self._server = ae.start_server(
                address, block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.handler)]
            )
        except OSError as exc:
            where = f"{address[0]}:{address[1]}"
            raise ConfigError(
                f"[pacs] cannot listen for storage commitment on {where}: {exc.strerror or exc}"
            ) from None
        log.info(
            "listening for storage commitment reports as %s on %s:%d", self.settings.ae_title, *self.address
        )

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
