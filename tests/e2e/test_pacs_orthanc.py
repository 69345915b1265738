"""``xray-worker send`` against a real PACS: Orthanc, started by the test on loopback ports.

Everything queued is delivered and appears in Orthanc exactly once per SOP Instance UID; an
Orthanc stopped mid-delivery and started again gets the rest; a sender SIGKILLed at random
moments loses nothing; storage commitment comes back as ``committed``. Orthanc is required:
these tests fail without it (apt-get install orthanc).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from daemon_harness import EXE
from orthanc import OUR_AET, Orthanc, free_port, wait_for
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import Engine, func, select

from worker.config import PacsDestination, PacsSettings
from worker.db import migrate, outbox
from worker.db.engine import make_engine
from worker.db.outbox import OutboxItem
from worker.db.schema import outbox as outbox_table
from worker.pacs.sender import Sender

pytestmark = pytest.mark.slow

STUDY = "1.2.826.0.1.3680043.10.543.7"


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    yield server
    server.stop()


def restamped(dicom_dir: Path, copies: int) -> list[bytes]:
    """The real DICOMs, ``copies`` times, each with new SOP and series UIDs, in one study of
    one test patient."""
    files = sorted(dicom_dir.glob("*.dcm"))
    out = []
    for _ in range(copies):
        for path in files:
            ds = pydicom.dcmread(path, force=True)  # the RSNA files have no preamble
            uid = generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, generate_uid()
            ds.PatientID, ds.PatientName = "OUTBOX", "Test^Outbox"  # Orthanc keys a study by patient too
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            out.append(buffer.getvalue())
    return out


def secondary_capture(uid: str) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, f"{STUDY}.99"
    ds.PatientID, ds.PatientName, ds.Modality, ds.ConversionType = "OUTBOX", "Test^Outbox", "OT", "WSD"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(256)) * 16
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def database(tmp_path: Path) -> tuple[str, Engine]:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    engine = make_engine(url, create=True)
    migrate.upgrade(engine)
    return url, engine


def fill(engine: Engine, payloads: list[bytes], destination: str = "orthanc") -> set[str]:
    items = []
    for payload in payloads:
        ds = pydicom.dcmread(BytesIO(payload), stop_before_pixels=True)
        kind = "sc" if ds.SOPClassUID == SecondaryCaptureImageStorage else "other"
        items.append(
            OutboxItem(destination, kind, ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, payload)
        )
    with engine.begin() as conn:
        outbox.enqueue(conn, items)
    return {i.sop_instance_uid for i in items}


def statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(
            dict(conn.execute(select(outbox_table.c.status, func.count()).group_by("status")).all())
        )


def met_outage(engine: Engine) -> bool:
    """Whether some row went back to pending with an error: a failed attempt was recorded."""
    c = outbox_table.c
    query = select(func.count()).where(c.status == "pending", c.last_error.is_not(None))
    with engine.connect() as conn:
        return conn.execute(query).scalar_one() > 0


def write_config(tmp_path: Path, url: str, orthanc: Orthanc, **pacs: Any) -> Path:
    settings = {"ae_title": OUR_AET, "batch_size": 8, "backoff_base": 0.2, "backoff_cap": 1.0}
    settings |= {"poll_interval": 0.2, "max_attempts": 1000, "association_timeout": 10.0} | pacs
    lines = ["[database]", f'url = "{url}"', "[pacs]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    lines += [
        "[[pacs.destinations]]",
        'name = "orthanc"',
        'ae_title = "ORTHANC"',
        'host = "127.0.0.1"',
        f"port = {orthanc.dicom_port}",
    ]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_sender(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [EXE, "--config", str(config), "send"], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def stop_sender(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def test_everything_queued_appears_in_orthanc_once(tmp_path: Path, orthanc: Orthanc, dicom_dir: Path):
    url, engine = database(tmp_path)
    sent = fill(engine, restamped(dicom_dir, 1) + [secondary_capture(generate_uid()) for _ in range(10)])
    config = write_config(tmp_path, url, orthanc)
    result = subprocess.run(
        [EXE, "--config", str(config), "send", "--once", "--batch-size", "100"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert statuses(engine) == Counter({"delivered": len(sent)})
    assert orthanc.sop_instance_uids() == Counter(dict.fromkeys(sent, 1))
    assert sorted(orthanc.study_instances(STUDY)) == sorted(sent)
    report = subprocess.run(
        [EXE, "--config", str(config), "report", "deliveries"], capture_output=True, text=True, check=True
    )
    assert "orthanc" in report.stdout and "delivered" in report.stdout


def test_orthanc_stopped_mid_delivery_gets_the_rest_once(tmp_path: Path, orthanc: Orthanc, dicom_dir: Path):
    url, engine = database(tmp_path)
    sent = fill(engine, restamped(dicom_dir, 6))
    log = tmp_path / "send.log"
    sender = start_sender(write_config(tmp_path, url, orthanc, batch_size=4), log)
    try:
        wait_for(lambda: statuses(engine)["delivered"] >= 4, 120, "the first deliveries")
        orthanc.stop(kill=True)
        # A batch in flight when Orthanc died records the answers it got first: wait until the
        # sender has met the outage (a row back to pending with its error), then nothing more
        # may be marked delivered while Orthanc is down.
        wait_for(lambda: met_outage(engine), 120, "the sender to meet the outage")
        during = statuses(engine)["delivered"]
        time.sleep(3)  # it backs off and tries again, in vain
        assert statuses(engine)["delivered"] == during
        orthanc.start()
        wait_for(lambda: statuses(engine)["delivered"] == len(sent), 180, "every object to be delivered")
        assert stop_sender(sender) == 0
    finally:
        if sender.poll() is None:
            sender.kill()
    assert during < len(sent), "the outage did not come mid-delivery: nothing was tested"
    assert orthanc.sop_instance_uids() == Counter(dict.fromkeys(sent, 1)), log.read_text()[-3000:]
    with engine.connect() as conn:
        retried = conn.execute(select(func.count()).where(outbox_table.c.attempts > 1)).scalar_one()
    assert retried > 0  # the outage was met, and retried


def test_a_sender_killed_at_random_moments_loses_nothing(tmp_path: Path, orthanc: Orthanc, dicom_dir: Path):
    url, engine = database(tmp_path)
    sent = fill(engine, restamped(dicom_dir, 2) + [secondary_capture(generate_uid()) for _ in range(60)])
    config = write_config(tmp_path, url, orthanc, batch_size=5)
    log = tmp_path / "send.log"
    rng = random.Random(15)
    kills = 0
    for _ in range(12):
        proc = start_sender(config, log)
        time.sleep(rng.uniform(0.5, 3.0))  # start-up is about a second: some kills land mid-batch
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
        assert sum(statuses(engine).values()) == len(sent)  # no row lost or added
        if statuses(engine)["delivered"] == len(sent):
            break
    started = log.read_text().count("sending as ")
    proc = start_sender(config, log)
    try:
        wait_for(lambda: statuses(engine)["delivered"] == len(sent), 180, "every object to be delivered")
        wait_for(lambda: log.read_text().count("sending as ") > started, 60, "the last sender to start")
        assert stop_sender(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert kills >= 3
    assert orthanc.sop_instance_uids() == Counter(dict.fromkeys(sent, 1))


def test_storage_commitment_round_trip(tmp_path: Path, dicom_dir: Path):
    commitment_port = free_port()
    server = Orthanc(tmp_path / "orthanc", commitment_port=commitment_port)
    server.start()
    _, engine = database(tmp_path)
    sent = fill(engine, restamped(dicom_dir, 1)[:6] + [secondary_capture(generate_uid()) for _ in range(4)])
    destination = PacsDestination(
        "orthanc", "ORTHANC", "127.0.0.1", server.dicom_port, storage_commitment=True
    )
    settings = PacsSettings(
        destinations=(destination,),
        ae_title=OUR_AET,
        commitment_port=commitment_port,
        association_timeout=10.0,
    )
    sender = Sender(settings, engine)
    assert sender.listener is not None
    sender.listener.start()
    try:

        def stored() -> bool:  # one batch per call: a slow machine may need a retry
            sender.step()
            found = statuses(engine)
            return found["delivered"] + found["committed"] == len(sent)

        wait_for(stored, 120, "every object stored")
        wait_for(
            lambda: statuses(engine)["committed"] == len(sent), 120, "Orthanc's storage commitment report"
        )
    finally:
        sender.listener.stop()
        server.stop()
    with engine.connect() as conn:
        transactions = {r[0] for r in conn.execute(select(outbox_table.c.commitment_transaction_uid))}
    assert len(transactions) == 1 and None not in transactions
