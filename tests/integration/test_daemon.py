"""The inbox daemon in-process: one step at a time, on real images, a real SQLite database."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from worker.config import InferenceSettings
from worker.daemon import Daemon
from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.schema import audit_events, results
from worker.db.store import Store
from worker.errors import TransientError
from worker.model.predictor import Predictor
from worker.runtime.faults import Faults
from worker.sinks.filer import Folders
from worker.sources.claim import WORK_DIR, WorkArea
from worker.sources.inbox import Inbox

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "samples").glob("*.[jd]*[gm]"))  # the 4 JPEGs and 2 DICOMs


def make_site(tmp_path: Path, model) -> Site:
    """An inbox, processed/ and failed/ under ``tmp_path``, real SQLite, batches of 4."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    migrate.upgrade(make_engine(url, create=True))
    folders = Folders(tmp_path / "processed", tmp_path / "failed")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return Site(tmp_path, inbox, folders, Store(url), Predictor(model, InferenceSettings(batch_size=4)))


@pytest.fixture
def site(tmp_path: Path, loaded_model):
    return make_site(tmp_path, loaded_model)


class Site:
    def __init__(self, root: Path, inbox: Path, folders: Folders, store: Store, predictor: Predictor):
        self.root, self.inbox, self.folders, self.store, self.predictor = (
            root,
            inbox,
            folders,
            store,
            predictor,
        )

    def daemon(self, worker_id: str = "w1", **kw) -> Daemon:
        return Daemon(
            inbox=Inbox(
                self.inbox, stability_seconds=0, rescan_interval=0, recursive=kw.pop("recursive", False)
            ),
            work=WorkArea(self.inbox, worker_id),
            predictor=self.predictor,
            store=self.store,
            folders=self.folders,
            batch_size=4,
            max_wait=0,
            worker_host="test",
            **kw,
        )

    def drain(self, daemon: Daemon, rounds: int = 20) -> None:
        daemon.recover()
        for _ in range(rounds):
            daemon.step()
        daemon.work.close()

    def files(self, folder: str) -> list[str]:
        base = self.root / folder
        return (
            sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()) if base.exists() else []
        )

    def rows(self, table):
        with self.store.engine.connect() as conn:
            return conn.execute(select(table)).all()


def drop(site: Site, *sources: Path, names: list[str] | None = None) -> None:
    for i, src in enumerate(sources):
        shutil.copy(src, site.inbox / (names[i] if names else src.name))


def test_files_are_screened_recorded_and_filed_by_label(site: Site):
    drop(site, *SAMPLES)
    site.drain(site.daemon())
    processed = site.files("processed")
    assert len(processed) == len(SAMPLES) == 6
    for entry in processed:
        label, day, _name = entry.split("/")
        assert label in ("NORMAL", "PNEUMONIA") and len(day) == 10
    assert [p.name for p in site.inbox.iterdir()] == [WORK_DIR]  # nothing left behind
    rows = site.rows(results)
    assert len(rows) == 6 and {r.image_format for r in rows} == {"JPEG", "DICOM"}
    audits = site.rows(audit_events)
    assert sorted(a.outcome for a in audits) == ["screened"] * 6
    for a in audits:  # each audit row points at a file that exists, from where it was found
        assert Path(a.destination_path).exists() and a.source_path.startswith(str(site.inbox))
        assert a.result_id is not None


def test_bad_file_goes_to_failed_with_its_reason(site: Site):
    (site.inbox / "notes.png").write_text("not an image")
    (site.inbox / "empty.dcm").write_bytes(b"")
    site.drain(site.daemon())
    failed = site.files("failed")
    assert sorted(Path(f).name for f in failed) == [
        "empty.dcm",
        "empty.dcm.error.json",
        "notes.png",
        "notes.png.error.json",
    ]
    reasons = {a.source_path.rsplit("/", 1)[1]: a.reason for a in site.rows(audit_events)}
    assert reasons == {
        "notes.png": "not an image: the file is text (expected PNG, JPEG or DICOM)",
        "empty.dcm": "empty file (0 bytes)",
    }
    assert site.rows(results) == []


def test_identical_content_is_screened_once(site: Site):
    drop(site, SAMPLES[0], SAMPLES[0], SAMPLES[0], names=["a.jpeg", "b.jpeg", "c.jpeg"])
    site.drain(site.daemon())
    drop(site, SAMPLES[0], names=["later.jpeg"])
    site.drain(site.daemon())
    assert len(site.rows(results)) == 1
    outcomes = sorted(a.outcome for a in site.rows(audit_events))
    assert outcomes == ["duplicate", "duplicate", "duplicate", "screened"]
    assert len(site.files("processed")) == 4


def test_same_name_never_overwrites(site: Site):
    (site.inbox / "ward1").mkdir()
    (site.inbox / "ward2").mkdir()
    shutil.copy(SAMPLES[0], site.inbox / "ward1" / "chest.jpeg")
    shutil.copy(SAMPLES[1], site.inbox / "ward2" / "chest.jpeg")
    site.drain(site.daemon(recursive=True))
    names = sorted(Path(p).name for p in site.files("processed"))
    assert names == ["chest-1.jpeg", "chest.jpeg"]
    sources = sorted(a.source_path for a in site.rows(audit_events))
    assert sources == [str(site.inbox / "ward1" / "chest.jpeg"), str(site.inbox / "ward2" / "chest.jpeg")]


def test_crash_between_commit_and_move_is_finished_by_the_restart(site: Site, monkeypatch):
    drop(site, *SAMPLES[:3])
    import worker.sinks.filer as filer_module

    real_move = filer_module.move_no_clobber
    calls = {"n": 0}

    def crash_on_second_move(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("power cut")  # not an error the daemon handles: a crash
        return real_move(*args, **kwargs)

    monkeypatch.setattr(filer_module, "move_no_clobber", crash_on_second_move)
    first = site.daemon()
    first.recover()
    with pytest.raises(KeyboardInterrupt):
        for _ in range(5):
            first.step()
    first.work.close()
    assert len(site.files("processed")) == 1 and len(site.rows(audit_events)) == 3  # committed, not all filed
    monkeypatch.setattr(filer_module, "move_no_clobber", real_move)
    site.drain(site.daemon())
    audits = site.rows(audit_events)
    assert len(audits) == 3 and len(site.rows(results)) == 3  # nothing recorded twice
    assert sorted(Path(a.destination_path).name for a in audits) == sorted(s.name for s in SAMPLES[:3])
    assert all(Path(a.destination_path).exists() for a in audits)
    assert not list((site.inbox / WORK_DIR / "w1").glob("*~*"))


def test_database_outage_keeps_files_claimed_until_it_returns(site: Site, monkeypatch):
    drop(site, *SAMPLES[:2])
    daemon = site.daemon()
    daemon.recover()
    real = site.store.record_batch

    def down(*args, **kwargs):
        raise TransientError("database is locked")

    monkeypatch.setattr(site.store, "record_batch", down)
    with pytest.raises(TransientError):
        daemon.step()
    assert len(list((site.inbox / WORK_DIR / "w1").glob("*~*"))) == 2 and site.files("processed") == []
    monkeypatch.setattr(site.store, "record_batch", real)
    for _ in range(3):
        daemon.step()
    daemon.work.close()
    assert len(site.files("processed")) == 2 and len(site.rows(audit_events)) == 2


def test_unwritable_processed_folder_is_retried(site: Site, monkeypatch):
    drop(site, SAMPLES[0])
    import worker.sinks.filer as filer_module

    real_move = filer_module.move_no_clobber

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(filer_module, "move_no_clobber", full)
    daemon = site.daemon()
    daemon.recover()
    with pytest.raises(TransientError, match="No space left"):
        daemon.step()
    monkeypatch.setattr(filer_module, "move_no_clobber", real_move)
    daemon.step()
    daemon.work.close()
    assert len(site.files("processed")) == 1 and len(site.rows(audit_events)) == 1


def test_symlinks_and_fifos_stay_in_the_inbox(site: Site, tmp_path: Path):
    outside = tmp_path / "secret.jpeg"
    shutil.copy(SAMPLES[0], outside)
    (site.inbox / "link.jpeg").symlink_to(outside)
    os.mkfifo(site.inbox / "pipe.png")
    site.drain(site.daemon())
    assert (site.inbox / "link.jpeg").is_symlink() and outside.exists()
    assert (site.inbox / "pipe.png").exists()
    assert site.rows(audit_events) == []


def _power_cut() -> None:
    raise KeyboardInterrupt("power cut")  # not an error the daemon handles: a crash


@pytest.mark.parametrize("nth_move", [1, 2, 3, 4])
def test_crash_mid_move_is_finished_without_a_second_copy(site: Site, nth_move: int):
    drop(site, *SAMPLES[:3])
    (site.inbox / "broken.jpeg").write_bytes(SAMPLES[0].read_bytes()[:3000])
    first = site.daemon(faults=Faults("mid-move", nth_move, kill=_power_cut))
    first.recover()
    with pytest.raises(KeyboardInterrupt):  # with the file linked at its destination and still claimed
        for _ in range(5):
            first.step()
    first.work.close()
    site.drain(site.daemon())
    filed = sorted(Path(p).name for p in site.files("processed") + site.files("failed"))
    assert filed == sorted([s.name for s in SAMPLES[:3]] + ["broken.jpeg", "broken.jpeg.error.json"])
    audits = site.rows(audit_events)
    assert len(audits) == 4 and len(site.rows(results)) == 3
    assert all(Path(a.destination_path).exists() for a in audits)
    assert sorted(p.name for p in (site.inbox / WORK_DIR / "w1").iterdir()) == [".alive", ".lock"]


def test_a_share_that_drops_mid_batch_leaves_files_claimed_not_failed(site: Site, monkeypatch):
    drop(site, *SAMPLES[:2])
    daemon = site.daemon()
    daemon.recover()
    real_predict = site.predictor.predict
    away = site.root / "inbox-gone"

    def share_drops(paths):
        site.inbox.rename(away)
        return real_predict(paths)

    monkeypatch.setattr(site.predictor, "predict", share_drops)
    with pytest.raises(TransientError, match="is not there"):
        daemon.step()
    assert site.rows(audit_events) == []  # unreadable because it is gone: not "failed"
    away.rename(site.inbox)
    monkeypatch.setattr(site.predictor, "predict", real_predict)
    for _ in range(3):
        daemon.step()
    daemon.work.close()
    assert sorted(a.outcome for a in site.rows(audit_events)) == ["screened", "screened"]
    assert len(site.files("processed")) == 2 and site.files("failed") == []


def test_a_heartbeat_while_the_share_is_gone_is_waited_out_not_fatal(site: Site):
    daemon = site.daemon()
    site.inbox.rename(site.root / "inbox-gone")
    with pytest.raises(TransientError, match="is not there"):
        daemon.step()  # the first step beats
    (site.root / "inbox-gone").rename(site.inbox)
    drop(site, SAMPLES[0])
    for _ in range(3):
        daemon.step()
    daemon.work.close()
    assert len(site.files("processed")) == 1


def _claim_for(site: Site, worker_id: str, *sources: Path) -> WorkArea:
    """Another worker on the same inbox, holding claims on ``sources``."""
    drop(site, *sources)
    other = WorkArea(site.inbox, worker_id)
    for src in sources:
        assert other.claim(site.inbox / src.name) is not None
    return other


def test_a_running_worker_adopts_the_files_of_one_that_dies_after_the_lease(site: Site):
    dying = _claim_for(site, "dying", *SAMPLES[:2])
    daemon = site.daemon(lease_seconds=1.0)
    daemon.recover()
    daemon.step()
    assert site.files("processed") == []  # alive: its claims are its own
    dying.close()  # dies: its heartbeat stops
    time.sleep(1.2)
    for _ in range(3):
        daemon.step()
    daemon.work.close()
    assert len(site.files("processed")) == 2
    assert [a.worker_id for a in site.rows(audit_events)] == ["w1", "w1"]
    assert not list((site.inbox / WORK_DIR / "dying").glob("*~*"))


def test_a_batch_longer_than_the_lease_does_not_make_a_live_worker_look_dead(site: Site, monkeypatch):
    drop(site, *SAMPLES[:2])
    daemon = site.daemon(lease_seconds=1.0)
    real_predict = site.predictor.predict
    busy = threading.Event()

    def slow(paths):
        busy.set()
        time.sleep(2.5)
        return real_predict(paths)

    monkeypatch.setattr(site.predictor, "predict", slow)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    other = WorkArea(site.inbox, "other")
    try:
        assert busy.wait(30), "the batch never started"
        adopted = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            adopted += other.adopt_abandoned(lease_seconds=1.0)
            time.sleep(0.1)
    finally:
        daemon.stop()
        runner.join(30)
        other.close()
    assert adopted == []
    assert len(site.files("processed")) == 2
    assert [a.worker_id for a in site.rows(audit_events)] == ["w1", "w1"]


def test_a_file_taken_over_mid_batch_is_left_to_the_worker_that_took_it(site: Site, monkeypatch):
    drop(site, SAMPLES[0])
    frozen, adopter = site.daemon("frozen"), site.daemon("adopter")
    frozen.recover()
    real_predict = site.predictor.predict

    def paused_past_the_lease(paths):  # a VM paused, a share hung: the others think it is dead
        monkeypatch.setattr(site.predictor, "predict", real_predict)
        os.utime(site.inbox / WORK_DIR / "frozen" / ".alive", (0, 0))
        adopter.recover()
        return real_predict(paths)

    monkeypatch.setattr(site.predictor, "predict", paused_past_the_lease)
    frozen.step()
    assert site.rows(audit_events) == []  # not recorded as unreadable
    for _ in range(3):
        adopter.step()
    frozen.work.close()
    adopter.work.close()
    [audit] = site.rows(audit_events)
    assert (audit.worker_id, audit.outcome) == ("adopter", "screened")
    assert len(site.files("processed")) == 1 and site.files("failed") == []
