"""``xray-worker pull`` against a real PACS: Orthanc, started by the test on loopback ports and
loaded with DICOM twins of real films (../shared/data/site_sample), the real DICOMs
(../shared/data/dicom), CT and MR images (some in the same studies as chest films) and chest
films of an older date.

A pull retrieves exactly the CR and DX instances of the period into the inbox, each once; a
rerun retrieves nothing; pulls SIGKILLed mid-run and rerun end with every instance retrieved
exactly once; two pulls at once on one PostgreSQL retrieve each instance once between them;
with C-MOVE, the same instances come through our own ``receive``; a PACS that
rejects the association, and a port nobody listens on, give a typed error, a clear line and a
non-zero exit, with nothing recorded as retrieved.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from daemon_harness import EXE
from dicom_factory import dicom_twin, gradient, make_dicom
from orthanc import OUR_AET, Orthanc, free_port, wait_for
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from sqlalchemy import URL, Engine, func, select
from test_receive_e2e import Receiver

from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.schema import pull_instances, pull_runs

pytestmark = pytest.mark.slow
pytest_plugins = ["db_fixtures"]

TODAY = date.today()
RECENT = (TODAY - timedelta(days=1)).strftime("%Y%m%d")
OLD = (TODAY - timedelta(days=400)).strftime("%Y%m%d")


@dataclass(frozen=True)
class Loaded:
    orthanc: Orthanc
    wanted: frozenset[str]  # SOP Instance UIDs of the CR and DX instances of the last days
    others: frozenset[str]  # CT, MR and old chest films: never to be retrieved


def study(n: int, date_: str) -> dict[str, object]:
    return {
        "StudyInstanceUID": generate_uid(),
        "StudyDate": date_,
        "PatientID": f"PULL-{n}",
        "PatientName": "Pull^Test",
    }


def twins(data_dir: Path, folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Chest films of the last days (CR and DX, two per study) and of long ago; CT and MR images,
    some in the chest studies, some in studies of their own."""
    films = sorted((data_dir / "site_sample" / "NORMAL").glob("*.jpeg"))[:12]
    films += sorted((data_dir / "site_sample" / "PNEUMONIA").glob("*.jpeg"))[:12]
    wanted, old, others = [], [], []
    for n in range(0, len(films), 2):
        keys = study(n, OLD if n >= 20 else RECENT)
        for k, film in enumerate(films[n : n + 2]):
            modality = "DX" if n % 4 == 0 else "CR"
            path = dicom_twin(
                film,
                folder / f"twin-{n}-{k}.dcm",
                Modality=modality,
                SeriesInstanceUID=generate_uid(),
                **keys,
            )
            (old if keys["StudyDate"] == OLD else wanted).append(path)
        if n % 6 == 0:  # a CT series in the chest study
            others.append(
                make_dicom(
                    folder / f"ct-in-{n}.dcm",
                    gradient(),
                    sop_class=CTImageStorage,
                    attributes={"Modality": "CT", **keys},
                )
            )
    for n in range(4):
        keys = study(100 + n, RECENT)
        for k in range(2):
            others.append(
                make_dicom(
                    folder / f"mr-{n}-{k}.dcm",
                    gradient(),
                    sop_class=MRImageStorage if n % 2 else CTImageStorage,
                    attributes={"Modality": "MR" if n % 2 else "CT", **keys},
                )
            )
    return wanted, old, others


def real_dicoms(dicom_dir: Path) -> list[bytes]:
    """The real DICOMs, each in a study of its own of the last days."""
    out = []
    for n, path in enumerate(sorted(dicom_dir.glob("*.dcm"))):
        ds = pydicom.dcmread(path, force=True)  # the RSNA files have no preamble
        uid = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SeriesInstanceUID = generate_uid()
        for keyword, value in study(200 + n, RECENT).items():
            setattr(ds, keyword, value)
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def uid_of(payload: bytes) -> str:
    return str(pydicom.dcmread(BytesIO(payload), stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, dicom_dir: Path) -> Iterator[Loaded]:
    root = tmp_path_factory.mktemp("pull-orthanc")
    server = Orthanc(
        root / "orthanc", modalities={"xray": {"AET": OUR_AET, "Host": "127.0.0.1", "Port": 104}}
    )
    server.start()
    try:
        (root / "made").mkdir()
        wanted_files, old_files, other_files = twins(data_dir, root / "made")
        wanted = [p.read_bytes() for p in wanted_files] + real_dicoms(dicom_dir)
        others = [p.read_bytes() for p in old_files + other_files]
        for payload in wanted + others:
            server.upload(payload)
        loaded = Loaded(server, frozenset(map(uid_of, wanted)), frozenset(map(uid_of, others)))
        assert len(loaded.wanted) >= 35 and len(loaded.others) >= 12
        assert sum(server.sop_instance_uids().values()) == len(loaded.wanted) + len(loaded.others)
        yield loaded
    finally:
        server.stop()


def setup(tmp_path: Path, orthanc: Orthanc, url: str = "", **source: object) -> tuple[Path, Path, Engine]:
    """A config with one source (``source`` over the defaults), its database (``url``, by
    default a SQLite file) and inbox."""
    url = url or f"sqlite:///{tmp_path / 'results.db'}"
    engine = make_engine(url, create=True)
    migrate.upgrade(engine)
    inbox = tmp_path / "inbox"
    keys = {"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}
    keys |= {"association_timeout": 5, "dimse_timeout": 10, "network_timeout": 10} | source
    lines = [
        "[database]",
        f'url = "{url}"',
        "[inbox]",
        f'path = "{inbox}"',
        "[pull]",
        "batch_size = 3",
        "connection_attempts = 1",
    ]
    lines += ["[[pull.sources]]", *(f"{key} = {json.dumps(value)}" for key, value in keys.items())]
    config = tmp_path / "config.toml"
    config.write_text("\n".join(lines) + "\n")
    return config, inbox, engine


def pull(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, "--config", str(config), "pull", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def inbox_uids(inbox: Path) -> list[str]:
    """The SOP Instance UID of every file in the inbox, as many times as it is there."""
    return sorted(
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in inbox.glob("*.dcm")
    )


def states(engine: Engine) -> dict[str, int]:
    p = pull_instances.c
    with engine.connect() as conn:
        return dict(conn.execute(select(p.state, func.count()).group_by(p.state)).all())


def test_a_pull_retrieves_exactly_the_chest_films_of_the_period_and_a_rerun_nothing(
    tmp_path: Path, loaded: Loaded
):
    config, inbox, engine = setup(tmp_path, loaded.orthanc)
    first = pull(config, "--days", "7")
    assert first.returncode == 0, first.stderr
    assert f"orthanc: {len(loaded.wanted)} found ({len(loaded.wanted)} new" in first.stdout
    assert f"{len(loaded.wanted)} retrieved, 0 failed, 0 waiting" in first.stdout
    assert inbox_uids(inbox) == sorted(loaded.wanted)
    assert sorted(p.name for p in inbox.iterdir()) == sorted(f"{uid}.dcm" for uid in loaded.wanted)
    assert states(engine) == {"retrieved": len(loaded.wanted)}

    again = pull(config, "--days", "7")  # the same period: found again, nothing new
    assert again.returncode == 0, again.stderr
    assert f"{len(loaded.wanted)} found (0 new" in again.stdout and " 0 retrieved" in again.stdout
    later = pull(config)  # from the high-water mark: today, when none of these studies was made
    assert later.returncode == 0, later.stderr
    assert "orthanc: 0 found (0 new" in later.stdout
    assert inbox_uids(inbox) == sorted(loaded.wanted)
    r = pull_runs.c
    with engine.connect() as conn:
        runs = conn.execute(select(r.status, r.first_date, r.retrieved).order_by(r.id)).all()
    assert [(run.status, run.retrieved) for run in runs] == [
        ("done", len(loaded.wanted)),
        ("done", 0),
        ("done", 0),
    ]
    assert runs[2].first_date == TODAY  # the earlier runs' last date: the high-water mark
    report = subprocess.run(
        [EXE, "--config", str(config), "report", "pulls", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    [night] = json.loads(report.stdout)["nights"]
    assert (night["source"], night["found"], night["retrieved"], night["failed"]) == (
        "orthanc",
        len(loaded.wanted),
        len(loaded.wanted),
        0,
    )


def test_pulls_killed_mid_run_and_rerun_retrieve_every_instance_exactly_once(tmp_path: Path, loaded: Loaded):
    config, inbox, engine = setup(tmp_path, loaded.orthanc)
    kills = 0
    for _ in range(3):
        before = len(list(inbox.glob("*.dcm"))) if inbox.exists() else 0
        proc = subprocess.Popen(
            [EXE, "--config", str(config), "pull", "--days", "7", "--set", "pull.batch_size=1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(
                lambda b=before, p=proc: (
                    p.poll() is not None or (inbox.exists() and len(list(inbox.glob("*.dcm"))) >= b + 2)
                ),
                120,
                "the pull to retrieve something",
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
    assert kills >= 2, "the pulls ended before they were killed: nothing was tested"
    assert len(list(inbox.glob("*.dcm"))) < len(loaded.wanted)

    last = pull(config, "--days", "7")
    assert last.returncode == 0, last.stderr
    assert inbox_uids(inbox) == sorted(loaded.wanted)  # each once: no <uid>-1.dcm
    assert not [p for p in inbox.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert states(engine) == {"retrieved": len(loaded.wanted)}


def test_a_pull_by_c_move_brings_the_same_instances_through_our_receiver(tmp_path: Path, loaded: Loaded):
    config, inbox, engine = setup(tmp_path, loaded.orthanc, retrieve="move", move_destination=OUR_AET)
    receiver = Receiver(inbox, tmp_path / "receive.log")
    loaded.orthanc.set_modality("xray", OUR_AET, receiver.port)  # our receive, as its move destination
    try:
        result = pull(config, "--days", "7")
        assert result.returncode == 0, result.stderr + receiver.log()
        assert f"{len(loaded.wanted)} retrieved, 0 failed" in result.stdout
        assert inbox_uids(inbox) == sorted(loaded.wanted)
        assert states(engine) == {"retrieved": len(loaded.wanted)}
    finally:
        receiver.stop()
        loaded.orthanc.set_modality("xray", OUR_AET, 104)


@pytest.mark.postgres
def test_two_pulls_at_once_on_postgres_split_the_work(tmp_path: Path, loaded: Loaded, postgres_schema: URL):
    url = postgres_schema.render_as_string(hide_password=False)
    config, inbox, engine = setup(tmp_path, loaded.orthanc, url, max_retrieves=2)
    args = [EXE, "--config", str(config), "pull", "--days", "7", "--set", "pull.batch_size=2"]
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert inbox_uids(inbox) == sorted(loaded.wanted)  # each once: no instance retrieved by both
    assert states(engine) == {"retrieved": len(loaded.wanted)}
    with engine.connect() as conn:
        done = conn.execute(select(pull_runs.c.retrieved)).scalars().all()
    assert sum(done) == len(loaded.wanted) and len(done) == 2
    engine.dispose()


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"ae_title": "NOT_ORTHANC"}, 69, "rejected the association"),
        ({"port": "free"}, 75, "no association"),
    ],
)
def test_a_pacs_that_refuses_or_cannot_be_reached_is_a_clear_error(
    tmp_path: Path, loaded: Loaded, change: dict[str, object], code: int, message: str
):
    if change.get("port") == "free":
        change = {"port": free_port()}
    config, inbox, engine = setup(tmp_path, loaded.orthanc, **change)
    started = time.monotonic()
    result = pull(config, "--days", "7")
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if message in line]
    assert lines and "orthanc (" in lines[0], result.stderr
    assert time.monotonic() - started < 60  # every wait is bounded
    assert not list(inbox.glob("*.dcm")) if inbox.exists() else True
    assert states(engine) == {}
    with engine.connect() as conn:
        [run] = conn.execute(select(pull_runs.c.status, pull_runs.c.reason, pull_runs.c.queried_at)).all()
    assert run.status == "failed" and message in run.reason and run.queried_at is None
    assert "Pull^Test" not in result.stderr and "PULL-" not in result.stderr  # no patient data
