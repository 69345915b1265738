"""The SR and the key image built for every real DICOM, checked by two independent validators.

dciodvfy (dicom3tools) checks each object against its IOD; dsrdump (DCMTK) reads each SR and
must show the finding, the numbers, the algorithm and the reference to the source. Both are
needed: a missing tool fails the test (it does not skip).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from worker.decode import decode_file
from worker.pacs import uids
from worker.pacs.objects import (
    Reference,
    Screening,
    build_key_image,
    build_report,
    from_bytes,
    to_bytes,
)

pytestmark = pytest.mark.slow  # a sweep of 19 real films and about 100 validator runs

APT = "apt-get install -y dicom3tools dcmtk"
CREATED = datetime(2024, 12, 2, 10, 30, 5, 250000)
SHA_A = "a1" * 32
SHA_B = "b2" * 32
POSITIVE = Screening(
    positive=True,
    probability=0.8734,
    threshold=0.62,
    model_name="pneumonia-resnet18",
    model_version="2024.12.1",
    model_sha256=SHA_A,
    site_profile="emergency",
)
NEGATIVE = replace(POSITIVE, positive=False, probability=0.1043)
PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {APT}")
    return path


@dataclass
class Built:
    """One real film and what was built from it, as bytes and as files."""

    name: str
    source: Dataset
    overlay: np.ndarray
    present: bytes
    absent: bytes
    key_image: bytes
    files: dict[str, Path]


def overlay_of(path: Path) -> np.ndarray:
    """A stand-in for the Grad-CAM overlay: the film's own pixels, tinted by position."""
    grey = decode_file(path).pixels.astype(np.uint16)
    ramp = np.linspace(0, 255, grey.shape[1], dtype=np.uint16)[None, :]
    return np.stack([grey, (grey + ramp) // 2, grey // 2], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def built(dicom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Built]:
    out = tmp_path_factory.mktemp("pacs")
    films = sorted(dicom_dir.glob("*.dcm"))
    assert len(films) == 19
    result = []
    for path in films:
        source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        overlay = overlay_of(path)
        item = Built(
            name=path.name,
            source=source,
            overlay=overlay,
            present=to_bytes(build_report(source, POSITIVE, CREATED)),
            absent=to_bytes(build_report(source, NEGATIVE, CREATED)),
            key_image=to_bytes(build_key_image(source, overlay, POSITIVE, CREATED)),
            files={},
        )
        for kind in ("present", "absent", "key_image"):
            file = out / f"{path.stem}.{kind}.dcm"
            file.write_bytes(getattr(item, kind))
            item.files[kind] = file
        result.append(item)
    return result


def test_every_object_passes_dciodvfy(built: list[Built]) -> None:
    dciodvfy = tool("dciodvfy")
    errors, warnings = [], set()
    for item in built:
        for kind, file in item.files.items():
            run = subprocess.run([dciodvfy, str(file)], capture_output=True, text=True, timeout=60)
            lines = (run.stdout + run.stderr).splitlines()
            errors += [f"{item.name} {kind}: {line}" for line in lines if line.startswith("Error")]
            if run.returncode != 0 and not errors:
                errors.append(f"{item.name} {kind}: dciodvfy exit {run.returncode}")
            warnings |= {re.sub("<[^>]*>", "<>", line) for line in lines if line.startswith("Warning")}
    assert not errors, "\n".join(errors)
    # What dciodvfy still says is about the sources' own values, copied as they are: a
    # one-component person name ("Retired Person Name form") and empty Type 2 study
    # attributes it would want for a DICOMDIR.
    assert all("Person Name" in w or "DICOMDIR" in w for w in warnings), sorted(warnings)


@pytest.mark.parametrize("kind", ["present", "absent"])
def test_dsrdump_shows_the_finding_the_numbers_the_algorithm_and_the_source(
    built: list[Built], kind: str
) -> None:
    dsrdump = tool("dsrdump")
    screening = POSITIVE if kind == "present" else NEGATIVE
    value = '(52101004,SCT,"Present")' if kind == "present" else '(272519000,SCT,"Absent")'
    for item in built:
        source = f'"{item.source.SOPClassUID}","{item.source.SOPInstanceUID}"'
        run = subprocess.run(
            [dsrdump, "+Pc", "+Pl", "+Pu", "+Psu", str(item.files[kind])],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0 and run.stderr == "", (item.name, run.stderr)
        text = run.stdout
        expected = [
            "Series              : AI pneumonia screen - NOT A DIAGNOSIS",
            '<contains CODE:(121071,DCM,"Finding")=(233604007,SCT,"Pneumonia")>',
            f'<contains CODE:(233604007,SCT,"Pneumonia")={value}>',
            f'<contains NUM:(122157,DCM,"Probability")="{screening.probability}" (1,UCUM,"no units")>',
            '<contains NUM:(122411,DCM,"Threshold Value")="0.62" (1,UCUM,"no units")>',
            '(111001,DCM,"Algorithm Name")="pneumonia-resnet18"',
            '(111003,DCM,"Algorithm Version")="2024.12.1"',
            f'(111002,DCM,"Algorithm Parameters")="model SHA-256 {SHA_A}"',
            '(111002,DCM,"Algorithm Parameters")="site profile emergency"',
            f'(121112,DCM,"Source of Measurement")=({source})',
            '<contains TEXT:(121106,DCM,"Comment")="NOT A DIAGNOSIS.',
        ]
        missing = [line for line in expected if line not in text]
        assert not missing, f"{item.name}: {missing}\n{text}"


def test_patient_and_study_are_the_sources_and_the_series_is_new(built: list[Built]) -> None:
    for item in built:
        for kind in ("present", "absent", "key_image"):
            made = from_bytes(getattr(item, kind))
            for keyword in PATIENT_AND_STUDY:
                assert str(made.get(keyword, "")) == str(item.source.get(keyword, "")), (item.name, keyword)
            assert made.SeriesInstanceUID != item.source.SeriesInstanceUID
            assert made.Modality == ("OT" if kind == "key_image" else "SR")


def test_the_report_records_the_source_as_evidence(built: list[Built]) -> None:
    for item in built:
        sr = from_bytes(item.present)
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
        (study,) = sr.CurrentRequestedProcedureEvidenceSequence
        (series,) = study.ReferencedSeriesSequence
        (instance,) = series.ReferencedSOPSequence
        assert study.StudyInstanceUID == item.source.StudyInstanceUID
        assert series.SeriesInstanceUID == item.source.SeriesInstanceUID
        assert instance.ReferencedSOPClassUID == item.source.SOPClassUID
        assert instance.ReferencedSOPInstanceUID == item.source.SOPInstanceUID
        assert "PredecessorDocumentsSequence" not in sr


def test_the_key_image_is_the_overlay_marked_not_for_diagnosis(built: list[Built]) -> None:
    for item in built:
        sc = from_bytes(item.key_image)
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
        assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert sc.StudyInstanceUID == item.source.StudyInstanceUID
        assert sc.BurnedInAnnotation == "YES"
        for keyword in ("SeriesDescription", "ImageComments", "DerivationDescription"):
            assert "NOT FOR DIAGNOSIS" in sc[keyword].value, keyword
        (reference,) = sc.SourceImageSequence
        assert reference.ReferencedSOPClassUID == item.source.SOPClassUID
        assert reference.ReferencedSOPInstanceUID == item.source.SOPInstanceUID
        assert sc.PhotometricInterpretation == "RGB"
        np.testing.assert_array_equal(sc.pixel_array, item.overlay)


def test_rebuilding_gives_identical_bytes(built: list[Built]) -> None:
    for item in built:
        assert to_bytes(build_report(item.source, POSITIVE, CREATED)) == item.present
        assert to_bytes(build_report(item.source, NEGATIVE, CREATED)) == item.absent
    for item in (built[0], built[-1]):  # a JPEG baseline film and a JPEG-LS one: 3 and 11 MB
        assert to_bytes(build_key_image(item.source, item.overlay, POSITIVE, CREATED)) == item.key_image
    # and the time of day the build ran at is nowhere in them
    later = to_bytes(build_report(built[0].source, POSITIVE, datetime(2025, 1, 1)))
    assert later != built[0].present and b"20241202" not in later


def test_uids_differ_by_source_model_and_kind(built: list[Built]) -> None:
    instances, series = {}, {}
    for item in built:
        for sha in (SHA_A, SHA_B):
            screening = replace(POSITIVE, model_sha256=sha)
            for kind, made in (
                ("sr", build_report(item.source, screening, CREATED)),
                ("sc", build_key_image(item.source, item.overlay[:64, :64], screening, CREATED)),
            ):
                key = (item.source.SOPInstanceUID, sha, kind)
                instances[key] = made.SOPInstanceUID
                series.setdefault((item.source.StudyInstanceUID, sha, kind), set()).add(
                    made.SeriesInstanceUID
                )
                assert len(made.SOPInstanceUID) <= 64 and made.SOPInstanceUID.startswith("2.25.")
                assert made.SOPInstanceUID == uids.instance_uid(*key)
    assert len(set(instances.values())) == len(instances) == 19 * 2 * 2
    # one series per study, model and kind, whichever films of the study were screened
    assert all(len(found) == 1 for found in series.values())
    assert len({next(iter(found)) for found in series.values()}) == len(series)
    studies = [item.source.StudyInstanceUID for item in built]
    assert len(set(studies)) < len(studies)  # the two WG04 films share a study, and so a series


def test_a_report_from_a_new_model_names_the_one_it_replaces(built: list[Built]) -> None:
    item = built[-1]
    old = from_bytes(item.present)
    replacing = build_report(
        item.source,
        replace(POSITIVE, model_sha256=SHA_B),
        CREATED,
        replaces=Reference.report(item.source, SHA_A),
    )
    assert replacing.SOPInstanceUID != old.SOPInstanceUID
    (study,) = replacing.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (instance,) = series.ReferencedSOPSequence
    assert (study.StudyInstanceUID, series.SeriesInstanceUID) == (old.StudyInstanceUID, old.SeriesInstanceUID)
    assert (instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID) == (
        old.SOPClassUID,
        old.SOPInstanceUID,
    )


def test_screening_from_a_stored_result() -> None:
    from worker.db.store import ResultRecord

    record = ResultRecord(
        content_sha256="c" * 64,
        label="PNEUMONIA",
        positive_class="PNEUMONIA",
        positive_probability=0.91,
        probabilities={"NORMAL": 0.09, "PNEUMONIA": 0.91},
        threshold=0.5,
        model_name="m",
        model_version="1",
        model_sha256=SHA_A,
        preprocessing="p",
        device="cpu",
        queued_at=None,
        started_at=datetime(2024, 1, 1, tzinfo=UTC),
        finished_at=datetime(2024, 1, 1, tzinfo=UTC),
        inference_ms=1.0,
        image_format="DICOM",
        width=1,
        height=1,
        site_profile="icu",
    )
    screening = Screening.from_result(record)
    assert screening.positive and screening.probability == 0.91 and screening.site_profile == "icu"


def test_a_key_image_is_for_a_positive_only(built: list[Built]) -> None:
    with pytest.raises(ValueError, match="positive"):
        build_key_image(built[0].source, built[0].overlay, NEGATIVE, CREATED)
