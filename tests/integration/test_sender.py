"""The sender against a PACS stand-in: a pynetdicom Storage SCP in this process that answers
each C-STORE with the status a test chose, and records every association's proposal."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    BasicTextSRStorage,
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)
from sqlalchemy import Engine, select

from worker.config import PacsDestination, PacsSettings
from worker.db import outbox
from worker.db.outbox import OutboxItem
from worker.db.schema import outbox as outbox_table
from worker.pacs.sender import Sender

pytest_plugins = ["db_fixtures"]

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def part10(
    uid: str, sop_class: str = SecondaryCaptureImageStorage, syntax: str = ExplicitVRLittleEndian
) -> bytes:
    """A small DICOM file: an 8x8 Secondary Capture, or (for an SR class) a header only."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1", f"{uid}.1"
    ds.PatientID, ds.PatientName, ds.Modality = (
        "OUTBOX",
        "Test^Outbox",
        "OT" if sop_class != BasicTextSRStorage else "SR",
    )
    if sop_class == SecondaryCaptureImageStorage:
        ds.ConversionType = "WSD"
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(range(64))
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def queue(
    engine: Engine, n: int, *, start: int = 1, sop_class: str = SecondaryCaptureImageStorage
) -> list[str]:
    uids = [f"2.25.{start + i}" for i in range(n)]
    items = [
        OutboxItem(
            "pacs",
            "sc" if sop_class != BasicTextSRStorage else "sr",
            sop_class,
            uid,
            "1.2.3",
            part10(uid, sop_class),
        )
        for uid in uids
    ]
    with engine.begin() as conn:
        outbox.enqueue(conn, items, now=T0)
    return uids


def state(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {r.sop_instance_uid: r for r in conn.execute(select(outbox_table))}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakePacs:
    """A Storage SCP on 127.0.0.1: ``statuses`` maps a SOP Instance UID to the status to answer
    (default 0x0000); ``proposals`` holds each association's proposed (SOP class, syntaxes)."""

    def __init__(
        self, port: int = 0, *, ae_title: str = "PACS", commitment_to: tuple[str, int] | None = None
    ):
        self.statuses: dict[str, int] = {}
        self.stored: list[str] = []
        self.proposals: list[list[tuple[str, tuple[str, ...]]]] = []
        self.commitment_to = commitment_to
        self.commitment_failures: set[str] = set()
        self.on_store: Callable[[Any], None] | None = None
        self.ae = AE(ae_title=ae_title)
        self.ae.require_called_aet = True
        for sop_class in (SecondaryCaptureImageStorage, BasicTextSRStorage):
            self.ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae.add_supported_context(StorageCommitmentPushModel)
        handlers = [
            (evt.EVT_REQUESTED, self._requested),
            (evt.EVT_C_STORE, self._store),
            (evt.EVT_N_ACTION, self._commit),
        ]
        self.server = self.ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()

    def _requested(self, event: Any) -> None:
        contexts = event.assoc.requestor.requested_contexts
        self.proposals.append([(cx.abstract_syntax, tuple(cx.transfer_syntax)) for cx in contexts])

    def _store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if self.on_store is not None:
            self.on_store(event)
        status = self.statuses.get(uid, 0x0000)
        if status in (0x0000, 0xB000, 0xB006, 0xB007):
            self.stored.append(uid)
        return status

    def _commit(self, event: Any) -> tuple[int, None]:
        """Answer the N-ACTION, then report on a new association (as Orthanc does)."""
        info = event.action_information
        refs = [
            (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
            for i in info.ReferencedSOPSequence
        ]
        threading.Thread(target=self._report, args=(str(info.TransactionUID), refs), daemon=True).start()
        return 0x0000, None

    def _report(self, transaction_uid: str, refs: list[tuple[str, str]]) -> None:
        assert self.commitment_to is not None
        time.sleep(0.2)
        ds = Dataset()
        ds.TransactionUID = transaction_uid
        ok = [r for r in refs if r[1] not in self.commitment_failures]
        bad = [r for r in refs if r[1] in self.commitment_failures]
        ds.ReferencedSOPSequence = [_ref(*r) for r in ok]
        if bad:
            ds.FailedSOPSequence = [_ref(*r, reason=0x0110) for r in bad]
        reporter = AE(ae_title=self.ae.ae_title)
        reporter.add_requested_context(StorageCommitmentPushModel)
        assoc = reporter.associate(*self.commitment_to, ae_title="XRAY_SCREEN")
        assert assoc.is_established
        assoc.send_n_event_report(
            ds, 2 if bad else 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
        assoc.release()


def _ref(sop_class: str, sop_instance: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
    if reason is not None:
        item.FailureReason = reason
    return item


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def pacs() -> Iterator[FakePacs]:
    fake = FakePacs()
    yield fake
    fake.stop()


def sender_for(engine: Engine, port: int, clock: Clock | None = None, **settings: Any) -> Sender:
    destination = PacsDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)
    if "storage_commitment" in settings:
        destination = replace(destination, storage_commitment=settings.pop("storage_commitment"))
    values = {
        "destinations": (destination,),
        "backoff_base": 10.0,
        "backoff_cap": 25.0,
        "association_timeout": 5.0,
    }
    values.update(settings)
    return Sender(PacsSettings(**values), engine, clock=clock or Clock())


def test_success_and_warnings_are_delivered_and_failures_wait_for_their_retry(engine: Engine, pacs: FakePacs):
    uids = queue(engine, 6)
    pacs.statuses = {uids[1]: 0xB000, uids[2]: 0xB006, uids[3]: 0xB007, uids[4]: 0xA700, uids[5]: 0xC000}
    clock = Clock()
    sender = sender_for(engine, pacs.port, clock)
    assert sender.step() == 6
    rows = state(engine)
    assert [rows[u].status for u in uids] == ["delivered"] * 4 + ["pending"] * 2
    assert all(rows[u].attempts == 1 for u in uids)
    assert rows[uids[4]].last_error == "C-STORE answered 0xA700 (Failure)"
    assert rows[uids[5]].last_error.startswith("C-STORE answered 0xC000")
    for u in uids[4:]:  # 10 s, with +-25 % jitter
        assert T0 + timedelta(seconds=7.5) <= rows[u].next_attempt_at <= T0 + timedelta(seconds=12.5)
    assert len(pacs.proposals) == 1 and sorted(pacs.stored) == sorted(uids[:4])
    assert sender.step() == 0 and len(pacs.proposals) == 1  # nothing due yet: no association
    pacs.statuses = {}
    clock.now = T0 + timedelta(seconds=13)
    assert sender.step() == 2
    rows = state(engine)
    assert all(rows[u].status == "delivered" for u in uids) and rows[uids[4]].attempts == 2


def test_one_association_per_batch_proposing_only_the_classes_in_it(engine: Engine, pacs: FakePacs):
    sc = queue(engine, 4)
    sr = queue(engine, 2, start=100, sop_class=BasicTextSRStorage)
    sender = sender_for(engine, pacs.port, batch_size=4)
    assert sender.step() == 4 and sender.step() == 2 and sender.step() == 0
    assert len(pacs.proposals) == 2
    uncompressed = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert pacs.proposals[0] == [(SecondaryCaptureImageStorage, uncompressed)]  # the first four are SCs
    assert pacs.proposals[1] == [(BasicTextSRStorage, uncompressed)]
    assert sorted(pacs.stored) == sorted(sc + sr)


def test_backoff_grows_to_its_cap_and_max_attempts_fail_with_the_reason(engine: Engine, pacs: FakePacs):
    [uid] = queue(engine, 1)
    pacs.statuses = {uid: 0xA700}
    clock = Clock()
    sender = sender_for(engine, pacs.port, clock, max_attempts=4)
    waits = []
    for _ in range(4):
        assert sender.step() == 1
        row = state(engine)[uid]
        if row.status == "failed":
            break
        waits.append((row.next_attempt_at - clock.now).total_seconds())
        clock.now = row.next_attempt_at
    # 10 s, 20 s, then 40 s capped at 25 s; each jittered by +-25 % and never above the cap
    assert 7.5 <= waits[0] <= 12.5 and 15 <= waits[1] <= 25 and 18.75 <= waits[2] <= 25
    assert (row.status, row.attempts, row.last_error) == ("failed", 4, "C-STORE answered 0xA700 (Failure)")
    clock.now += timedelta(days=1)
    assert sender.step() == 0  # a failed object waits for an operator


# pynetdicom 3.0 drops a refused connection's socket unclosed (its shutdown() raises first):
# the garbage collector closes it, with a ResourceWarning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_outage_is_retried_and_nothing_is_delivered_before_it_ends(engine: Engine):
    port = free_port()
    uids = queue(engine, 3)
    clock = Clock()
    sender = sender_for(engine, port, clock)
    assert sender.step() == 3
    rows = state(engine)
    assert all(rows[u].status == "pending" and rows[u].attempts == 1 for u in uids)
    assert rows[uids[0]].last_error.startswith("no association with PACS@127.0.0.1")
    fake = FakePacs(port)
    try:
        clock.now += timedelta(minutes=1)
        assert sender.step() == 3
        assert all(r.status == "delivered" for r in state(engine).values())
        assert sorted(fake.stored) == sorted(uids)
    finally:
        fake.stop()


def test_a_rejected_association_names_the_likely_cause(engine: Engine, pacs: FakePacs):
    queue(engine, 1)
    destination = PacsDestination(name="pacs", ae_title="NOT_THE_PACS", host="127.0.0.1", port=pacs.port)
    sender = Sender(PacsSettings(destinations=(destination,), association_timeout=5.0), engine, clock=Clock())
    sender.step()
    [row] = state(engine).values()
    assert row.status == "pending" and "rejected (is our AE title known to it?)" in row.last_error


def test_an_abort_mid_batch_keeps_every_unanswered_object_pending(engine: Engine, pacs: FakePacs):
    uids = queue(engine, 5)

    def abort_at_the_third(event: Any) -> None:
        if str(event.request.AffectedSOPInstanceUID) == uids[2]:
            event.assoc.abort()

    pacs.on_store = abort_at_the_third
    sender = sender_for(engine, pacs.port)
    sender.step()
    rows = state(engine)
    assert [rows[u].status for u in uids] == ["delivered", "delivered", "pending", "pending", "pending"]
    assert all(rows[u].attempts == 1 for u in uids)


def test_an_object_that_is_not_dicom_fails_at_once(engine: Engine, pacs: FakePacs):
    [good] = queue(engine, 1)
    with engine.begin() as conn:
        outbox.enqueue(
            conn, [OutboxItem("pacs", "sc", SecondaryCaptureImageStorage, "2.25.99", None, b"junk")], now=T0
        )
    sender_for(engine, pacs.port).step()
    rows = state(engine)
    assert rows[good].status == "delivered"
    assert rows["2.25.99"].status == "failed" and "not a DICOM Part 10 file" in rows["2.25.99"].last_error


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_storage_commitment_round_trip_on_a_new_association(engine: Engine):
    port = free_port()
    pacs = FakePacs(commitment_to=("127.0.0.1", port))
    uids = queue(engine, 4)
    pacs.commitment_failures = {uids[3]}
    sender = sender_for(engine, pacs.port, storage_commitment=True, commitment_port=port)
    assert sender.listener is not None
    sender.listener.start()
    try:
        sender.step()
        assert StorageCommitmentPushModel in [sop for sop, _ in pacs.proposals[0]]
        wait_for(lambda: state(engine)[uids[0]].status == "committed")
        rows = state(engine)
        assert [rows[u].status for u in uids[:3]] == ["committed"] * 3
        assert rows[uids[3]].status == "pending" and "reason 0x0110" in rows[uids[3]].last_error
        assert rows[uids[0]].commitment_transaction_uid and rows[uids[0]].committed_at is not None
    finally:
        sender.listener.stop()
        pacs.stop()
