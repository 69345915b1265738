"""The real ``xray-worker watch`` as subprocesses on real folders, for the end-to-end tests.

A ``Site`` is an inbox, processed/ and failed/ folders and a results database (migrated to
head). It starts daemons (each with its own worker id and log file), waits until they are
ready, drops files in, and reads back what the folders, the database and ``xray-worker
report`` say. ``close()`` kills whatever a failed test left running.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from outputs import filed as filed_under
from sqlalchemy import ColumnElement, Row, Table, create_engine, func, select

from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.schema import audit_events
from worker.sources.claim import WORK_DIR

EXE = Path(sys.executable).with_name("xray-worker")
READY = "ready: screening"


def wait_for(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(message)


def real_jpegs(full_res_dir: Path, n: int) -> list[Path]:
    return sorted((full_res_dir / "train").rglob("*.jpeg"))[:n]


class Site:
    def __init__(self, root: Path, db_url: str, model: Path):
        self.root, self.db_url, self.model = root, db_url, model
        self.inbox, self.processed, self.failed = root / "inbox", root / "processed", root / "failed"
        self.inbox.mkdir()
        self.procs: list[subprocess.Popen] = []
        self._log_start: dict[str, int] = {}
        self._running: dict[str, subprocess.Popen] = {}
        engine = make_engine(db_url, create=True)
        migrate.upgrade(engine)
        engine.dispose()

    def close(self) -> None:
        """Kill whatever a failed test left running."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    # -- daemons -----------------------------------------------------------------------

    def spawn(self, worker_id: str = "w1", *extra: str) -> subprocess.Popen:
        """Start a daemon; ``wait_ready`` waits for it (several can load their models at once)."""
        args = [
            EXE,
            "watch",
            "--inbox",
            self.inbox,
            "--processed",
            self.processed,
            "--failed",
            self.failed,
            "--db",
            self.db_url,
            "--model",
            self.model,
            "--trust-model",
            "--worker-id",
            worker_id,
            "--batch-size",
            "8",
            "--set",
            "inbox.stability_seconds=1",
            "--set",
            "inbox.max_wait_ms=100",
            *extra,
        ]
        log_path = self.log_path(worker_id)
        self._log_start[worker_id] = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:  # the child keeps its own copy
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self._running[worker_id] = proc
        return proc

    def wait_ready(self, worker_id: str = "w1", timeout: float = 120) -> None:
        """Until this start of the daemon says it is ready (a restart's log is appended to)."""
        proc = self._running[worker_id]
        deadline = time.monotonic() + timeout
        while READY not in self.log(worker_id, this_run=True):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"{worker_id} never became ready (exit {proc.poll()}):\n{self.log(worker_id)[-3000:]}"
                )
            time.sleep(0.2)

    def start(self, worker_id: str = "w1", *extra: str) -> subprocess.Popen:
        proc = self.spawn(worker_id, *extra)
        self.wait_ready(worker_id)
        return proc

    def stop(self, proc: subprocess.Popen) -> int:
        """SIGTERM: the daemon finishes its batch and exits; its exit status."""
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=60)

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL: no batch finished, no claim given back."""
        proc.kill()
        proc.wait(timeout=30)

    def log_path(self, worker_id: str) -> Path:
        return self.root / f"{worker_id}.log"

    def log(self, worker_id: str = "w1", *, this_run: bool = False) -> str:
        path = self.log_path(worker_id)
        if not path.exists():
            return ""
        with path.open("rb") as fh:
            fh.seek(self._log_start.get(worker_id, 0) if this_run else 0)
            return fh.read().decode(errors="replace")

    # -- files -------------------------------------------------------------------------

    def drop(self, files: Iterable[Path]) -> None:
        """Each file written beside the inbox, then renamed in: it appears complete."""
        landing = self.root / "landing"
        landing.mkdir(exist_ok=True)
        for f in files:
            shutil.copy(f, landing / f.name)
            (landing / f.name).rename(self.inbox / f.name)

    def waiting(self) -> list[Path]:
        return [p for p in self.inbox.rglob("*") if p.is_file() and WORK_DIR not in p.parts]

    def claim_folder(self, worker_id: str) -> Path:
        return self.inbox / WORK_DIR / worker_id

    def claimed(self, worker_id: str | None = None) -> list[Path]:
        """Files in a work area (one worker's, or any): claimed and not yet filed."""
        base = self.claim_folder(worker_id) if worker_id else self.inbox / WORK_DIR
        return [p for p in base.rglob("*~*") if p.is_file()] if base.exists() else []

    def filed(self) -> list[Path]:
        return filed_under(self.processed, self.failed)

    # -- the database ------------------------------------------------------------------

    def count(self, table: Table) -> int:
        engine = create_engine(self.db_url)
        with engine.connect() as conn:
            n = conn.execute(select(func.count()).select_from(table)).scalar_one()
        engine.dispose()
        return n

    def column(self, col: ColumnElement[Any]) -> list[Any]:
        """Every value of one column, e.g. ``results.c.content_sha256``."""
        engine = create_engine(self.db_url)
        with engine.connect() as conn:
            values = list(conn.execute(select(col)).scalars())
        engine.dispose()
        return values

    def audit_rows(self) -> list[Row[Any]]:
        engine = create_engine(self.db_url)
        with engine.connect() as conn:
            rows = conn.execute(select(audit_events).order_by(audit_events.c.at)).all()
        engine.dispose()
        return list(rows)

    def report(self, *args: str) -> dict[str, Any]:
        """``xray-worker report --format json`` over all time, as the operator would run it."""
        done = subprocess.run(
            [EXE, "report", "--db", self.db_url, "--since", "all", "--format", "json", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
