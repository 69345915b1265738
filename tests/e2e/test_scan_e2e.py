"""The real ``xray-worker scan``, as a subprocess, killed and interrupted in the middle of an archive."""

from __future__ import annotations

import hashlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.schema import audit_events, results, scanned_files

pytestmark = pytest.mark.slow
EXE = Path(sys.executable).with_name("xray-worker")
FILES = 120


class Archive:
    def __init__(self, tmp_path: Path, model: Path, sources: list[Path]):
        self.root, self.model = tmp_path / "archive", model
        self.db_path = tmp_path / "results.db"
        self.db_url = f"sqlite:///{self.db_path}"
        for i, f in enumerate(sources):
            dest = self.root / f"{i // 40:02d}" / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
        engine = make_engine(self.db_url, create=True)
        migrate.upgrade(engine)
        engine.dispose()
        self.engine = create_engine(self.db_url)
        self.log = tmp_path / "scan.log"

    def start(self) -> subprocess.Popen:
        args = [EXE, "scan", self.root, "--db", self.db_url, "--model", self.model, "--trust-model"]
        with self.log.open("wb") as log:  # the child keeps its own descriptor
            return subprocess.Popen([*args, "--batch-size", "2"], stdout=log, stderr=subprocess.STDOUT)

    def count(self, table) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar_one()

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold the database's write lock: the scan waits in its next commit, mid-run."""
        conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=30)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    def first_commit(self) -> None:
        wait_for(lambda: self.count(scanned_files) > 0, 120, f"no batch committed:\n{self.log.read_text()}")

    def snapshot(self) -> dict[str, tuple[str, int]]:
        return {
            str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }


def wait_for(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(message)


@pytest.fixture
def archive(tmp_path: Path, trained_model: Path, full_res_dir: Path):
    archive = Archive(tmp_path, trained_model, sorted((full_res_dir / "train").rglob("*.jpeg"))[:FILES])
    yield archive
    archive.engine.dispose()


def test_a_killed_scan_resumes_without_redoing_or_duplicating_anything(archive: Archive):
    before = archive.snapshot()
    proc = archive.start()
    archive.first_commit()
    with archive.write_lock():
        done_before_kill = archive.count(scanned_files)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    assert 0 < done_before_kill < FILES  # killed in the middle, mid-transaction
    assert archive.count(audit_events) == done_before_kill  # the batch in flight left no trace

    proc = archive.start()
    assert proc.wait(timeout=300) == 0, archive.log.read_text()
    log = archive.log.read_text()
    assert f"  {done_before_kill} skipped" in log and f"  {FILES - done_before_kill} screened" in log
    assert archive.count(results) == archive.count(scanned_files) == FILES
    with archive.engine.connect() as conn:
        rows = conn.execute(select(audit_events.c.source_path, audit_events.c.outcome)).all()
    assert Counter(r.outcome for r in rows) == {"screened": FILES}
    assert sorted(r.source_path for r in rows) == sorted(before)  # every file exactly once
    assert archive.snapshot() == before


def test_ctrl_c_commits_the_files_in_hand_and_exits_130(archive: Archive):
    proc = archive.start()
    archive.first_commit()
    with archive.write_lock():
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)  # the signal arrives while the scan waits to commit
    assert proc.wait(timeout=60) == 130
    log = archive.log.read_text()
    assert "SIGINT: committing the files in hand, then stopping" in log
    assert "scan interrupted (the next run goes on from here)" in log
    done = archive.count(scanned_files)
    assert 0 < done < FILES and archive.count(audit_events) == done  # all in hand was committed
    assert f"  {done} screened" in log

    proc = archive.start()
    assert proc.wait(timeout=300) == 0, archive.log.read_text()
    assert f"  {done} skipped" in archive.log.read_text()
    assert archive.count(audit_events) == archive.count(results) == FILES
