"""From the inbox to the PACS: ``xray-worker watch`` screens real DICOMs with the shipped model
and queues each result's objects with it; ``xray-worker send --once`` delivers them to a real
Orthanc, where each screened film's study holds exactly one report (and, for a positive, one
key image) that references it. The same films dropped again change nothing there.

The shipped model's gate refuses most adult films (docs/gate.md): the two RSNA films it
screens (both positive), one it refuses (no objects), and pediatric NORMAL films from the
training folder written as CR DICOMs (negatives: a report, no key image).
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from daemon_harness import EXE
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from sqlalchemy import create_engine, select
from test_pacs_orthanc import Orthanc

from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.schema import outbox, results

pytestmark = pytest.mark.slow

SCREENED = ("00436515-870c-4b36-a041-de91049b9ab4.dcm", "00f08de1-517e-4652-a04f-d1dc9ee48593.dcm")
REFUSED = "CR-MONO1-10-chest.dcm"


def as_cr(jpeg: Path, out: Path) -> Path:
    """A pediatric JPEG as a CR chest film of its own study."""
    pixels = np.asarray(Image.open(jpeg).convert("L"))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
        ComputedRadiographyImageStorage,
        uid,
    )
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = out.stem, "Test^Pacs", "CR"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "AP"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261202", "120000", "1", ""
    ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "", "", ""
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(out, enforce_file_format=True)
    return out


def write_config(root: Path, url: str, orthanc: Orthanc) -> Path:
    path = root / "config.toml"
    path.write_text(
        f"""
[database]
url = "{url}"
[inbox]
path = "{root / "inbox"}"
processed = "{root / "processed"}"
failed = "{root / "failed"}"
stability_seconds = 0.5
max_wait_ms = 100
worker_id = "w1"
[inference]
batch_size = 8
[explain]
heatmaps = "positives"
folder = "{root / "heatmaps"}"
[pacs]
ae_title = "XRAY_SCREEN"
[[pacs.destinations]]
name = "orthanc"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {orthanc.dicom_port}
"""
    )
    return path


def watch_until_filed(config: Path, inbox: Path, processed: Path, n: int, log: Path) -> None:
    """Start ``watch``, wait until ``n`` files are filed under processed/, stop it (SIGTERM)."""
    with log.open("ab") as out:
        proc = subprocess.Popen([EXE, "--config", str(config), "watch"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while len([p for p in processed.rglob("*.dcm")]) < n:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]


def send_once(config: Path) -> None:
    done = subprocess.run(
        [EXE, "--config", str(config), "send", "--once"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def study_objects(orthanc: Orthanc, study_uid: str) -> list[Dataset]:
    """Every instance Orthanc holds in one study, as datasets."""
    ids = orthanc.study_ids(study_uid)
    if not ids:
        return []
    [study_id] = ids
    found = []
    for instance in orthanc.get(f"/studies/{study_id}/instances"):
        url = f"http://127.0.0.1:{orthanc.http_port}/instances/{instance['ID']}/file"
        with urllib.request.urlopen(url, timeout=30) as reply:
            found.append(pydicom.dcmread(BytesIO(reply.read())))
    return found


def references(ds: Dataset) -> set[str]:
    """The SOP Instance UIDs an SR names as evidence, or an SC as its source image."""
    uids = {ref.ReferencedSOPInstanceUID for ref in ds.get("SourceImageSequence", [])}
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in study.ReferencedSeriesSequence:
            uids |= {ref.ReferencedSOPInstanceUID for ref in series.ReferencedSOPSequence}
    return uids


def test_watch_queues_and_send_delivers_one_report_per_screened_dicom(
    tmp_path: Path, dicom_dir: Path, full_res_dir: Path
) -> None:
    orthanc = Orthanc(tmp_path / "orthanc")
    orthanc.start()
    try:
        run(tmp_path, dicom_dir, full_res_dir, orthanc)
    finally:
        orthanc.stop()


def run(tmp_path: Path, dicom_dir: Path, full_res_dir: Path, orthanc: Orthanc) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    engine = make_engine(url, create=True)
    migrate.upgrade(engine)
    engine.dispose()
    inbox, processed = tmp_path / "inbox", tmp_path / "processed"
    inbox.mkdir()
    films = tmp_path / "films"
    films.mkdir()
    for name in (*SCREENED, REFUSED):
        (films / name).write_bytes((dicom_dir / name).read_bytes())
    normals = sorted((full_res_dir / "train" / "NORMAL").glob("*.jpeg"))[:2]
    for n, jpeg in enumerate(normals):
        as_cr(jpeg, films / f"normal{n}.dcm")
    sources = {p.name: pydicom.dcmread(p, stop_before_pixels=True, force=True) for p in films.glob("*.dcm")}
    config = write_config(tmp_path, url, orthanc)

    for path in films.glob("*.dcm"):
        (inbox / path.name).write_bytes(path.read_bytes())
    watch_until_filed(config, inbox, processed, len(sources), tmp_path / "watch.log")
    send_once(config)

    db = create_engine(url)
    with db.connect() as conn:
        labels = dict(conn.execute(select(results.c.sop_instance_uid, results.c.label)).all())
        heatmaps = dict(conn.execute(select(results.c.sop_instance_uid, results.c.heatmap_path)).all())
        statuses = [row.status for row in conn.execute(select(outbox.c.status))]
    db.dispose()
    screened = {name: ds for name, ds in sources.items() if ds.SOPInstanceUID in labels}
    assert sorted(screened) == sorted([*SCREENED, "normal0.dcm", "normal1.dcm"])  # the refused film: none
    assert {labels[sources[n].SOPInstanceUID] for n in SCREENED} == {"PNEUMONIA"}
    assert {labels[screened[n].SOPInstanceUID] for n in ("normal0.dcm", "normal1.dcm")} == {"NORMAL"}
    for ds in screened.values():  # a heatmap for each positive, none for a negative
        heatmap = heatmaps[ds.SOPInstanceUID]
        assert (heatmap is not None and Path(heatmap).is_file()) == (labels[ds.SOPInstanceUID] == "PNEUMONIA")
    assert statuses and set(statuses) == {"delivered"}

    def in_orthanc() -> dict[str, Any]:
        held = {}
        for name, ds in sources.items():
            objects = study_objects(orthanc, ds.StudyInstanceUID)
            ours = [o for o in objects if ds.SOPInstanceUID in references(o)]
            held[name] = sorted(str(o.SOPClassUID) for o in ours)
        return held

    expected = {
        name: sorted(
            [ComprehensiveSRStorage]
            + (
                [SecondaryCaptureImageStorage]
                if name in screened and labels[ds.SOPInstanceUID] == "PNEUMONIA"
                else []
            )
        )
        if name in screened
        else []
        for name, ds in sources.items()
    }
    assert in_orthanc() == expected
    total = len(orthanc.get("/instances"))
    assert total == sum(len(v) for v in expected.values())

    # The same films again (new names): duplicates, nothing queued or sent twice.
    for path in films.glob("*.dcm"):
        (inbox / f"again-{path.name}").write_bytes(path.read_bytes())
    watch_until_filed(config, inbox, processed, 2 * len(sources), tmp_path / "watch.log")
    send_once(config)
    db = create_engine(url)
    with db.connect() as conn:
        assert len(conn.execute(select(outbox.c.id)).all()) == len(statuses)
    db.dispose()
    assert in_orthanc() == expected and len(orthanc.get("/instances")) == total
