"""The DICOM receiver's metrics for real: a pynetdicom sender stores one instance and has one
refused (over max_instance_bytes) on a receiver on 127.0.0.1, and the counters say so."""

from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage

from worker.config import ReceiveSettings
from worker.metrics.receiver import ReceiverMetrics
from worker.receive.scp import Receiver
from worker.receive.store import InboxWriter


class Observed(ReceiverMetrics):
    """The metrics, and an event set when a connection has ended (its counter is then final)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ended = threading.Event()

    def closed(self, ending: str) -> None:
        super().closed(ending)
        self.ended.set()


def cr_image(size: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ComputedRadiographyImageStorage, generate_uid(), "CR"
    ds.Rows, ds.Columns = size // 100, 100
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(ds.Rows * ds.Columns)
    return ds


def test_stored_refused_and_associations_are_counted(tmp_path: Path):
    registry = CollectorRegistry()
    writer = InboxWriter(tmp_path / "inbox")
    writer.prepare()
    settings = ReceiveSettings(port=0, max_instance_bytes=100_000, association_timeout=5, idle_timeout=5)
    receiver = Receiver(settings, writer)
    metrics = Observed(registry, active=lambda: receiver.active)
    receiver.observer = metrics
    receiver.start()
    runner = threading.Thread(target=receiver.run, daemon=True)
    runner.start()
    try:
        ae = AE(ae_title="TEST_SCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate(*receiver.address, ae_title="XRAY_SCREEN")
        assert assoc.is_established
        small, big = cr_image(10_000), cr_image(400_000)
        assert [int(assoc.send_c_store(ds).Status) for ds in (small, big)] == [0, 0xA700]
        text = generate_latest(registry).decode()
        active = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert active["xray_screen_receive_associations_active"] == 1
        assoc.release()
        assert metrics.ended.wait(10)
    finally:
        receiver.stop()
        runner.join(30)
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
    }
    stored = found[("xray_screen_receive_instances_total", (("outcome", "stored"), ("reason", "")))]
    refused = found[
        ("xray_screen_receive_instances_total", (("outcome", "refused"), ("reason", "out_of_resources")))
    ]
    assert (stored, refused) == (1, 1)
    assert (
        found[("xray_screen_receive_bytes_total", ())]
        == (tmp_path / "inbox" / f"{small.SOPInstanceUID}.dcm").stat().st_size
    )
    assert found[("xray_screen_receive_associations_total", (("ending", "released"),))] == 1
    assert found[("xray_screen_receive_associations_active", ())] == 0
