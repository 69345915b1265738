"""``pull`` against a PACS that misbehaves: a pynetdicom Query/Retrieve SCP on loopback whose
answers each test chooses. A C-FIND failure status, answers that are all malformed, Pending
answers that never end, a PACS that stops answering, C-GET sub-operations that fail: each a
typed error (or a failed attempt) with a clear reason, the run recorded ``failed`` with it,
nothing recorded retrieved that is not in the inbox, every wait bounded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date
from datetime import time as dt_time
from pathlib import Path
from typing import Any

import pydicom.config
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from sqlalchemy import Engine, select

from worker.config import PullSettings, PullSource
from worker.db import migrate, pulls
from worker.db.engine import make_engine
from worker.db.schema import pull_runs
from worker.errors import PacsError, PacsUnavailable
from worker.pull.period import Period
from worker.pull.run import Puller
from worker.receive.store import InboxWriter

STUDY, SERIES, SOP = (
    "1.2.826.0.1.3680043.10.543.1",
    "1.2.826.0.1.3680043.10.543.1.1",
    "1.2.826.0.1.3680043.10.543.1.1.1",
)
PERIOD = Period(date(2026, 12, 1), date(2026, 12, 8))


class FakeQueryRetrieve:
    """A Study Root C-FIND and C-GET SCP: one study, one CR series, one instance, unless
    ``find`` (the level -> what to answer) or ``get`` says otherwise."""

    def __init__(self) -> None:
        self.find: dict[str, str] = {}
        self.silent_once_done = False
        self.get = "ct"  # C-GET sends a CT image, which the pull did not propose: the sub-operation fails
        self.ae = AE(ae_title="FAKEPACS")
        self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        for sop_class in (ComputedRadiographyImageStorage, CTImageStorage):
            self.ae.add_supported_context(sop_class, scp_role=True, scu_role=True)
        handlers = [(evt.EVT_C_FIND, self._find), (evt.EVT_C_GET, self._get)]
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()

    def _find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        level = str(event.identifier.QueryRetrieveLevel)
        mode = self.find.get(level, "")
        if mode == "failure":
            yield 0xA700, None
            return
        if mode == "silent" or (mode == "silent-once" and not self.silent_once_done):
            self.silent_once_done = True
            time.sleep(4)
        if mode == "forever":
            while not event.is_cancelled:
                time.sleep(0.05)
                yield 0xFF00, answer(level, malformed=False)
            return
        if mode == "one-malformed":
            yield 0xFF00, answer(level, malformed=True)
        yield 0xFF00, answer(level, malformed=mode == "malformed")
        yield 0x0000, None

    def _get(self, event: Any) -> Iterator[Any]:
        yield 1
        ds = answer("IMAGE", malformed=False)
        ds.SOPClassUID = CTImageStorage
        ds.file_meta = Dataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.Modality, ds.Rows, ds.Columns = "CT", 4, 4
        yield 0xFF00, ds


def answer(level: str, *, malformed: bool) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = STUDY
    if level in ("SERIES", "IMAGE"):
        ds.SeriesInstanceUID, ds.Modality = SERIES, "CR"
    if level == "IMAGE":
        ds.SOPInstanceUID, ds.SOPClassUID = SOP, ComputedRadiographyImageStorage
    if malformed:  # a name where the UIDs belong (sent as LO: pydicom checks a UI it writes)
        for tag in (0x0020000D, 0x0020000E):
            ds[tag] = DataElement(tag, "LO", "Doe^Jane")
    return ds


@pytest.fixture
def fake() -> Iterator[FakeQueryRetrieve]:
    """The fake PACS; pydicom reading values as ``pull`` has it read them (quiet_dicom_logs:
    no check that would warn, quoting the value, on the way in: ours come after)."""
    mode = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    server = FakeQueryRetrieve()
    yield server
    server.stop()
    pydicom.config.settings.reading_validation_mode = mode


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'results.db'}", create=True)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def puller(
    fake: FakeQueryRetrieve,
    engine: Engine,
    tmp_path: Path,
    settings: PullSettings | None = None,
    **source: Any,
) -> Puller:
    keys = {"name": "fake", "ae_title": "FAKEPACS", "host": "127.0.0.1", "port": fake.port}
    keys |= {"association_timeout": 2.0, "dimse_timeout": 2.0, "network_timeout": 2.0, "query_timeout": 2.0}
    writer = InboxWriter(tmp_path / "inbox")
    writer.prepare()
    settings = settings or PullSettings(max_attempts=2, connection_attempts=1)
    return Puller(PullSource(**(keys | source)), settings, engine, writer)


def the_run(engine: Engine) -> Any:
    with engine.connect() as conn:
        [run] = conn.execute(select(pull_runs)).all()
    return run


def retrieved(engine: Engine) -> int:
    with engine.connect() as conn:
        return pulls.counts(conn, "fake").get("retrieved", 0)


@pytest.mark.parametrize(
    ("level", "mode", "error", "message"),
    [
        ("STUDY", "failure", PacsError, r"C-FIND of studies answered 0xA700 \(Failure\)"),
        ("SERIES", "failure", PacsError, r"C-FIND of series answered 0xA700"),
        ("STUDY", "malformed", PacsError, r"every answer \(1\) was malformed"),
        ("STUDY", "forever", PacsUnavailable, r"still pending after 2 s \(query_timeout\)"),
        ("IMAGE", "silent", PacsUnavailable, r"C-FIND of instances: no answer within 2 s"),
    ],
)
def test_a_query_that_fails_is_a_typed_error_and_a_failed_run(
    fake: FakeQueryRetrieve, engine: Engine, tmp_path: Path, level: str, mode: str, error: type, message: str
):
    fake.find[level] = mode
    started = time.monotonic()
    with pytest.raises(error, match=message) as caught:
        puller(fake, engine, tmp_path).run(PERIOD)
    assert time.monotonic() - started < 15  # bounded by the source's timeouts
    assert "fake (FAKEPACS@127.0.0.1:" in str(caught.value) and "Doe" not in str(caught.value)
    run = the_run(engine)
    assert (run.status, run.queried_at) == ("failed", None) and str(caught.value) == run.reason
    assert retrieved(engine) == 0 and not list((tmp_path / "inbox").iterdir())


def test_malformed_answers_are_left_out_and_their_dates_asked_again(
    fake: FakeQueryRetrieve, engine: Engine, tmp_path: Path
):
    fake.find["SERIES"] = "one-malformed"  # one series answer checks, the other does not
    summary = puller(fake, engine, tmp_path).run(PERIOD)
    assert (summary.found, summary.malformed) == (1, 1)
    assert "1 malformed answers left out" in summary.line()
    run = the_run(engine)
    assert run.status == "done" and run.queried_at is None  # the next run asks for these dates again
    with engine.connect() as conn:
        assert pulls.high_water(conn, "fake") is None


def test_failed_sub_operations_are_a_failed_attempt_with_their_counts(
    fake: FakeQueryRetrieve, engine: Engine, tmp_path: Path
):
    for _ in range(2):
        summary = puller(fake, engine, tmp_path).run(PERIOD)
        assert (summary.found, summary.retrieved, summary.failed) == (1, 0, 1)
    with engine.connect() as conn:
        [row] = conn.execute(select(pulls.pull_instances)).all()
    assert (row.state, row.attempts) == ("failed", 2)  # [pull] max_attempts = 2
    assert "C-GET answered" in row.reason and "1 failed" in row.reason, row.reason
    assert not list((tmp_path / "inbox").iterdir())
    summary = puller(fake, engine, tmp_path).run(PERIOD)  # left failed: not tried again
    assert (summary.retrieved, summary.failed, summary.waiting) == (0, 0, 0)


def test_outside_its_window_a_pull_queries_but_retrieves_nothing(
    fake: FakeQueryRetrieve, engine: Engine, tmp_path: Path
):
    night_only = puller(fake, engine, tmp_path, window="20:00-06:00")
    night_only.local_time = lambda: dt_time(12, 0)
    summary = night_only.run(PERIOD)
    assert (summary.found, summary.retrieved, summary.failed, summary.waiting) == (1, 0, 0, 1)
    assert (
        summary.stopped == "outside the window 20:00-06:00"
        and "stopped: outside the window" in summary.line()
    )
    night_only.local_time = lambda: dt_time(23, 0)
    assert night_only.run(PERIOD).failed == 1  # in the window: tried (and the fake's C-GET fails)


def test_a_pacs_silent_once_is_tried_again_after_a_backoff(
    fake: FakeQueryRetrieve, engine: Engine, tmp_path: Path
):
    fake.find["IMAGE"] = "silent-once"
    patient = PullSettings(max_attempts=2, connection_attempts=2, backoff_base=0.1)
    summary = puller(fake, engine, tmp_path, patient).run(PERIOD)
    assert summary.found == 1 and the_run(engine).status == "done"
    fake.silent_once_done = False
    with pytest.raises(PacsUnavailable, match="no answer within 2 s"):  # once is all it may try
        puller(fake, engine, tmp_path, PullSettings(connection_attempts=1)).run(PERIOD)
