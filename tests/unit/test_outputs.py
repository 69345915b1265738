"""What a result becomes besides its row, through both front ends on the fakes: heatmaps after
screening (``[explain]``), PACS objects queued with the result (``worker/sinks/pacs.py``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import FakeModel, FakePredictor, MemoryStore, film
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, SecondaryCaptureImageStorage, generate_uid

from worker.answers import Prediction
from worker.config import PacsDestination
from worker.daemon import Daemon
from worker.decode import DecodedImage
from worker.explain.heatmaps import annotate
from worker.explain.overlay import BAND_COLOUR
from worker.pacs.objects import from_bytes
from worker.sinks.filer import Folders
from worker.sinks.pacs import PacsOutputs
from worker.sources.claim import WorkArea
from worker.sources.inbox import Inbox

STUDY = generate_uid()
DESTINATIONS = (
    PacsDestination(name="main", ae_title="PACS1", host="pacs", outputs=("sr", "sc")),
    PacsDestination(name="archive", ae_title="VNA", host="vna", outputs=("sr",)),
)
HEAT = (200, 40, 10)  # the fake heatmap's colour


class DicomPredictor(FakePredictor):
    """The fake model, answering for ``.dcm`` files as for a decoded DICOM (64 x 48 grey)."""

    def _answer(self, path: Path) -> Any:
        answer = super()._answer(path)
        if isinstance(answer, Prediction) and path.suffix == ".dcm":
            pixels = np.full((64, 400), 100, np.uint8)
            answer = replace(answer, decoded=DecodedImage(pixels, "DICOM", 400, 64, None))
        return answer


class Headers:
    """The sink's header reader: a made-up CR header per file, noting where it was read."""

    def __init__(self) -> None:
        self.read: list[Path] = []

    def __call__(self, path: Path) -> Dataset:
        assert path.exists(), "the header is read while the file is where the pipeline has it"
        self.read.append(path)
        ds = Dataset()
        ds.SOPClassUID = ComputedRadiographyImageStorage
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[path.read_text()])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, generate_uid(entropy_srcs=[STUDY])
        ds.Modality, ds.PatientID, ds.PatientName = "CR", "P1", "Doe^J"
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 400, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        return ds


class FakeHeatmapper:
    """The heatmap stage's interface (``Heatmapper.annotate``): a flat-coloured PNG per positive."""

    def __init__(self, folder: Path):
        self.folder, self.written = folder, []

    def annotate(self, answers: Any, window: int = 16) -> Any:
        def write(batch: list[Any]) -> list[Path]:
            paths = []
            for answer in batch:
                path = self.folder / f"{answer.path.name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (48, 84), HEAT).save(path)
                paths.append(path)
            self.written += paths
            return paths

        return annotate(answers, lambda a: getattr(a, "label", None) == "PNEUMONIA", write, window)


def daemon(root: Path, store: MemoryStore, predictor: Any = None, **kw: Any) -> Daemon:
    inbox = root / "inbox"
    inbox.mkdir(exist_ok=True)
    d = Daemon(
        inbox=Inbox(inbox, stability_seconds=0, rescan_interval=0),
        work=WorkArea(inbox, "w1"),
        predictor=predictor or DicomPredictor(),
        store=store,
        folders=Folders(root / "processed", root / "failed"),
        batch_size=8,
        max_wait=0,
        worker_host="t",
        **kw,
    )
    d.recover()
    return d


def drop(root: Path, **files: bytes) -> None:
    for name, content in files.items():
        (root / "inbox" / name.replace("_", ".")).write_bytes(content)


def queued(store: MemoryStore) -> dict[tuple[str, str], list[str]]:
    """(kind, destination) -> the source files' contents the objects report on."""
    by_result = {(r.model_sha256, r.content_sha256): r for r in store.results.values()}
    found: dict[tuple[str, str], list[str]] = {}
    for o in store.outbox.values():
        assert o.result_key in by_result  # linked to a result of this batch
        found.setdefault((o.kind, o.destination), []).append(by_result[o.result_key].label)
    return {k: sorted(v) for k, v in found.items()}


def test_the_daemon_queues_a_report_per_screened_dicom_and_a_key_image_per_positive(tmp_path: Path):
    store, headers = MemoryStore(), Headers()
    (tmp_path / "inbox").mkdir()
    drop(
        tmp_path,
        pos_dcm=film("PNEUMONIA", 0.9),
        neg_dcm=film("NORMAL", 0.1),
        photo_png=film("PNEUMONIA", 0.8),
    )
    d = daemon(
        tmp_path,
        store,
        outputs=PacsOutputs(DESTINATIONS, header=headers, reported=store.reported_by_other_models),
    )
    d.step()
    assert queued(store) == {
        ("sr", "main"): ["NORMAL", "PNEUMONIA"],
        ("sr", "archive"): ["NORMAL", "PNEUMONIA"],
        ("sc", "main"): ["PNEUMONIA"],  # the archive takes reports only; the PNG has no study
    }
    assert all(".xray-screen" in p.parts for p in headers.read)  # read in the work area, before filing
    assert len(list((tmp_path / "processed").rglob("*.dcm"))) == 2
    sc = next(from_bytes(o.payload) for o in store.outbox.values() if o.kind == "sc")
    assert sc.SOPClassUID == SecondaryCaptureImageStorage and sc.StudyInstanceUID == STUDY
    pixels = sc.pixel_array  # no heatmap: the film with the flag burned in below it
    assert pixels.shape == (64 + 20, 400, 3) and (pixels[:64] == 100).all()
    band = pixels[64:].reshape(-1, 3)
    assert (band == BAND_COLOUR).all(axis=1).mean() > 0.5 and band.min(axis=1).max() > 200  # white text

    drop(tmp_path, again_dcm=film("PNEUMONIA", 0.9))  # the same content: a duplicate
    before = dict(store.outbox)
    d.step()
    assert store.outbox == before and len(headers.read) == 2


def test_heatmaps_are_made_for_positives_recorded_with_the_result_and_are_the_key_image(tmp_path: Path):
    store, maps = MemoryStore(), FakeHeatmapper(tmp_path / "heatmaps")
    (tmp_path / "inbox").mkdir()
    drop(tmp_path, pos_dcm=film("PNEUMONIA", 0.9), neg_dcm=film("NORMAL", 0.1))
    d = daemon(tmp_path, store, heatmapper=maps, outputs=PacsOutputs(DESTINATIONS, header=Headers()))
    d.step()
    paths = {r.label: r.heatmap_path for r in store.results.values()}
    assert paths == {"PNEUMONIA": str(maps.written[0]), "NORMAL": None}
    sc = next(from_bytes(o.payload) for o in store.outbox.values() if o.kind == "sc")
    assert sc.pixel_array.shape == (84, 48, 3) and (sc.pixel_array == HEAT).all()

    drop(tmp_path, copy_dcm=film("PNEUMONIA", 0.9))
    d.step()
    assert len(maps.written) == 1  # a duplicate reuses the stored result: no new map


def test_a_source_without_uids_is_recorded_without_objects(tmp_path: Path):
    def bare(path: Path) -> Dataset:
        ds = Dataset()
        ds.Modality = "CR"
        return ds

    store = MemoryStore()
    (tmp_path / "inbox").mkdir()
    drop(tmp_path, pos_dcm=film("PNEUMONIA", 0.9))
    daemon(tmp_path, store, outputs=PacsOutputs(DESTINATIONS, header=bare)).step()
    assert len(store.results) == 1 and store.outbox == {}


def test_the_scan_queues_the_same_objects(tmp_path: Path):
    from worker.scan.local import Scanner
    from worker.sources.walk import FileFilter, walk_files

    root = tmp_path / "archive"
    root.mkdir()
    (root / "pos.dcm").write_bytes(film("PNEUMONIA", 0.9))
    (root / "neg.dcm").write_bytes(film("NORMAL", 0.1))
    store, maps = MemoryStore(), FakeHeatmapper(tmp_path / "heatmaps")
    Scanner(
        files=walk_files([root], FileFilter((), (), None)),
        predictor=DicomPredictor(),
        store=store,
        worker_host="t",
        heatmapper=maps,
        outputs=PacsOutputs(DESTINATIONS, header=Headers()),
    ).run()
    assert queued(store) == {
        ("sr", "main"): ["NORMAL", "PNEUMONIA"],
        ("sr", "archive"): ["NORMAL", "PNEUMONIA"],
        ("sc", "main"): ["PNEUMONIA"],
    }
    assert [r.heatmap_path for r in store.results.values() if r.positive] == [str(maps.written[0])]


@pytest.mark.parametrize("outputs", [("sr",), ()])
def test_no_key_image_without_a_destination_that_takes_one(outputs: tuple[str, ...]):
    sink = PacsOutputs([PacsDestination(name="a", ae_title="A", host="h", outputs=outputs)])
    assert sink.key_images_to == [] and bool(sink) == bool(outputs)


def test_a_new_models_report_names_the_older_models_report_as_its_predecessor(tmp_path: Path):
    store, headers = MemoryStore(), Headers()
    (tmp_path / "inbox").mkdir()
    drop(tmp_path, a_dcm=film("PNEUMONIA", 0.9), b_dcm=film("NORMAL", 0.2))
    old = PacsOutputs(DESTINATIONS, header=headers, reported=store.reported_by_other_models)
    first_daemon = daemon(tmp_path, store, outputs=old)
    first_daemon.step()
    first_daemon.work.close()  # the next daemon takes its work area
    first = {o.sop_instance_uid for o in store.outbox.values() if o.kind == "sr"}
    assert all("PredecessorDocumentsSequence" not in from_bytes(o.payload) for o in store.outbox.values())

    newer = DicomPredictor(FakeModel(version="2", sha256="e" * 64))
    drop(tmp_path, a_dcm=film("PNEUMONIA", 0.9))  # the same film again, for the new model
    daemon(tmp_path, store, predictor=newer, outputs=old).step()
    reports = [o for o in store.outbox.values() if o.kind == "sr" and o.sop_instance_uid not in first]
    assert {o.destination for o in reports} == {"main", "archive"}
    [predecessor] = from_bytes(reports[0].payload).PredecessorDocumentsSequence
    named = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert named in first
