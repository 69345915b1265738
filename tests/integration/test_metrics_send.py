"""The PACS sender's metrics for real: a pynetdicom Storage SCP on 127.0.0.1 stores two
objects and refuses a third, retried once then given up; the counters and the outbox gauges
follow, against a real SQLite outbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from pynetdicom import AE, evt

from worker.config import PacsDestination, PacsSettings
from worker.db import migrate, outbox
from worker.db.engine import make_engine
from worker.db.outbox import OutboxItem
from worker.metrics.sender import SenderMetrics
from worker.pacs.sender import Sender

REFUSED = "2.25.3"


def part10(uid: str) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3", f"{uid}.1", "OT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(64)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_sent_retried_failed_and_the_outbox_backlog(tmp_path: Path):
    pacs = AE(ae_title="PACS")
    pacs.add_supported_context(SecondaryCaptureImageStorage, [ExplicitVRLittleEndian])
    status = lambda event: 0xA700 if event.request.AffectedSOPInstanceUID == REFUSED else 0  # noqa: E731
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, status)])
    engine = make_engine(f"sqlite:///{tmp_path / 'results.db'}", create=True)
    migrate.upgrade(engine)
    now = [datetime(2026, 12, 1, 8, 0, tzinfo=UTC)]
    with engine.begin() as conn:
        items = [
            OutboxItem("main", "sc", SecondaryCaptureImageStorage, f"2.25.{n}", "1.2.3", part10(f"2.25.{n}"))
            for n in (1, 2, 3)
        ]
        outbox.enqueue(conn, items, now=now[0])
    destination = PacsDestination(
        name="main", ae_title="PACS", host="127.0.0.1", port=server.server_address[1]
    )
    settings = PacsSettings(destinations=(destination,), max_attempts=2, backoff_base=1, backoff_cap=1)
    registry = CollectorRegistry()
    sender = Sender(settings, engine, clock=lambda: now[0])
    sender.observer = SenderMetrics(registry, ["main"], backlog=sender.backlog)
    try:
        assert sender.step() == 3
        first = samples(registry)
        now[0] += timedelta(seconds=5)  # the refused one is due again
        assert sender.step() == 1
        second = samples(registry)
    finally:
        server.shutdown()
        engine.dispose()

    def objects(found: dict, outcome: str) -> float:
        return found[("xray_screen_send_objects_total", (("destination", "main"), ("outcome", outcome)))]

    def outbox_now(found: dict, status: str) -> float:
        return found[("xray_screen_outbox_objects", (("destination", "main"), ("status", status)))]

    assert (objects(first, "sent"), objects(first, "retried"), objects(first, "failed")) == (2, 1, 0)
    assert outbox_now(first, "pending") == 1 and outbox_now(first, "failed") == 0
    assert first[("xray_screen_outbox_oldest_pending_timestamp_seconds", (("destination", "main"),))] == (
        datetime(2026, 12, 1, 8, 0, tzinfo=UTC).timestamp()
    )
    assert (objects(second, "sent"), objects(second, "retried"), objects(second, "failed")) == (2, 1, 1)
    assert outbox_now(second, "pending") == 0 and outbox_now(second, "failed") == 1
    assert second[("xray_screen_send_batch_seconds_count", ())] == 2
