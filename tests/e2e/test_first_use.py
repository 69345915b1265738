"""First use, through the real commands: ``scan`` and ``watch`` create a missing SQLite file at
the newest schema (saying so once), refuse a database that is behind, and an empty inbox
says where files go. The shipped model and the samples, so no training data is needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.db import migrate
from worker.db.engine import make_engine

pytest_plugins = ["db_fixtures"]
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).with_name("xray-worker")
HEAD = migrate.head_revision()
CREATED = "created the results database"


def environ() -> dict[str, str]:
    """No XRAY_SCREEN_* from the caller: the flags below say where everything goes."""
    return {k: v for k, v in os.environ.items() if not k.startswith("XRAY_SCREEN_")}


def xray_worker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EXE), *args], capture_output=True, text=True, env=environ(), timeout=300, check=False
    )


def revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return migrate.current_revision(engine)
    finally:
        engine.dispose()


def test_scan_creates_a_missing_sqlite_file_once_then_uses_it(tmp_path: Path):
    database = tmp_path / "var" / "results.db"
    url = f"sqlite:///{database}"
    first = xray_worker("scan", str(ROOT / "samples"), "--db", url)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count(CREATED) == 1 and f"{CREATED} {database}" in first.stderr
    assert "4 screened, 2 positive" in first.stderr and "2 out of scope" in first.stderr
    assert revision(url) == HEAD

    again = xray_worker("scan", str(ROOT / "samples"), "--db", url)
    assert again.returncode == 0, again.stderr
    assert CREATED not in again.stderr and "6 skipped (unchanged since the last scan)" in again.stderr


def test_scan_refuses_a_database_behind_head_and_leaves_it(db_url: str):
    engine = make_engine(db_url, create=True)
    migrate.upgrade(engine, "0003")
    engine.dispose()
    result = xray_worker("scan", str(ROOT / "samples"), "--db", db_url)
    assert result.returncode == 78, result.stderr
    assert "at revision 0003, expected" in result.stderr and "run `xray-worker db upgrade`" in result.stderr
    assert CREATED not in result.stderr and revision(db_url) == "0003"


def test_watch_creates_a_missing_database_and_says_where_to_drop_files(tmp_path: Path):
    database = tmp_path / "results.db"
    log_path = tmp_path / "watch.log"
    args = [str(EXE), "watch", "--db", f"sqlite:///{database}", "--set", "inbox.rescan_interval=1"]
    for name in ("inbox", "processed", "failed"):
        args += [f"--{name}", str(tmp_path / name)]
    with log_path.open("w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=environ())
    try:
        deadline = time.monotonic() + 180
        while "is empty: copy or move" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"never said the inbox was empty:\n{log_path.read_text()}"
            time.sleep(0.2)
        time.sleep(2.5)  # more rescans of the empty inbox (one a second): the line is not repeated
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert log.count(CREATED) == 1 and f"{CREATED} {database}" in log
    inbox = tmp_path / "inbox"
    expected = f"the inbox {inbox} is empty: copy or move X-rays (PNG, JPEG, DICOM) into it to screen them"
    assert log.count(expected) == 1
    assert log.index(CREATED) < log.index("ready: screening") < log.index(expected)
    assert "alembic" not in log  # its INFO lines about itself, at each schema check
    assert revision(f"sqlite:///{database}") == HEAD
