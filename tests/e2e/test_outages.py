"""The real daemon through outages: the database gone for 30 s, processed/ unusable, the inbox's
share dropping. Each time it logs, stays up, loses nothing and catches up by itself.

PostgreSQL is never stopped here (other tests may be using the server): the daemon talks to
it through a local TCP proxy, and the proxy is what goes away.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_harness import Site, real_jpegs
from db_support import POSTGRES_URL
from sqlalchemy import URL, create_engine, make_url, select

from worker.db.schema import audit_events, results

pytest_plugins = ["db_fixtures"]
pytestmark = pytest.mark.slow
SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "pneumonia-resnet18" / "export.pkl"
OUTAGE_SECONDS = 30


class Proxy:
    """127.0.0.1:<port> forwarded to a server; ``stop()`` cuts every connection, ``start()`` heals."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self._sockets: list[socket.socket] = []
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))  # the same port again after a stop
        listener.listen(64)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, args=(listener, self._stopped), daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            for sock in self._sockets:
                for close in (lambda s=sock: s.shutdown(socket.SHUT_RDWR), sock.close):
                    with contextlib.suppress(OSError):
                        close()
            self._sockets.clear()
        time.sleep(0.3)  # the accept loop closes its listener

    def _accept(self, listener: socket.socket, stopped: threading.Event) -> None:
        with listener:
            while not stopped.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                client.settimeout(None)
                with self._lock:
                    self._sockets += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for sock in (src, dst):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def wait(site: Site, condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Until ``condition``; on a timeout, fail with the daemon's log as it is then."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout} s; the log:\n{site.log()[-6000:]}")
        time.sleep(0.2)


def drop(site: Site, files: list[Path]) -> None:
    for f in files:
        shutil.copy(f, site.root / f.name)  # written elsewhere, then renamed in: a finished copy
        (site.root / f.name).rename(site.inbox / f.name)


def assert_all_filed_once(site: Site, files: list[Path]) -> None:
    assert site.waiting() == [] and site.claimed() == []
    assert sorted(p.name for p in site.filed()) == sorted(f.name for f in files)  # no -1 copies
    assert site.count(audit_events) == len(files) and site.count(results) == len(files)
    engine = create_engine(site.db_url)
    with engine.connect() as conn:
        rows = conn.execute(select(audit_events.c.destination_path, audit_events.c.outcome)).all()
    engine.dispose()
    assert {outcome for _, outcome in rows} == {"screened"}  # nothing recorded as failed
    assert all(Path(dest).is_file() for dest, _ in rows)
    assert "Traceback" not in site.log()


@pytest.fixture
def jpegs(full_res_dir: Path) -> list[Path]:
    return real_jpegs(full_res_dir, 40)


@pytest.fixture
def sites(tmp_path: Path):
    made: list[Site] = []

    def make(db_url: str | None = None) -> Site:
        made.append(Site(tmp_path, db_url or f"sqlite:///{tmp_path / 'results.db'}", SHIPPED_MODEL))
        return made[-1]

    yield make
    for site in made:
        site.close()


def test_sqlite_write_lock_held_elsewhere(sites, jpegs):
    site = sites()
    proc = site.start()
    drop(site, jpegs[:10])
    wait(site, lambda: len(site.filed()) == 10, 60, "not filed before the outage")
    holder = sqlite3.connect(make_url(site.db_url).database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's writer, for longer than the busy timeout
    try:
        drop(site, jpegs[10:20])
        wait(site, lambda: "retrying in" in site.log(), OUTAGE_SECONDS + 15, "no retry logged")
        assert "database is locked" in site.log() and proc.poll() is None
        assert len(site.filed()) == 10  # nothing filed without its row
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait(site, lambda: len(site.filed()) == 20, 120, "did not catch up")
    assert site.stop(proc) == 0
    assert_all_filed_once(site, jpegs[:20])


@pytest.mark.postgres
def test_postgres_unreachable_for_30_seconds(sites, jpegs, postgres_schema: URL):
    server = make_url(POSTGRES_URL)
    proxy = Proxy((server.host or "127.0.0.1", server.port or 5432))
    proxy.start()
    url = postgres_schema.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    site = sites(url)
    try:
        proc = site.start()
        drop(site, jpegs[:10])
        wait(site, lambda: len(site.filed()) == 10, 60, "not filed before the outage")
        proxy.stop()
        went = time.monotonic()
        drop(site, jpegs[10:20])
        wait(site, lambda: "retrying in" in site.log(), OUTAGE_SECONDS, "no retry logged")
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - went)))
        assert proc.poll() is None and len(site.filed()) == 10
        assert "database unavailable" in site.log()
        proxy.start()
        wait(site, lambda: len(site.filed()) == 20, 120, "did not catch up")
        assert site.stop(proc) == 0
        assert_all_filed_once(site, jpegs[:20])
    finally:
        proxy.stop()


def test_processed_folder_unusable_then_restored(sites, jpegs):
    site = sites()
    proc = site.start()
    drop(site, jpegs[:8])
    wait(site, lambda: len(site.filed()) == 8, 60, "not filed before the outage")
    kept = site.root / "processed-kept"
    site.processed.rename(kept)
    site.processed.write_text("a file where the folder should be: mkdir fails, as on a full or RO disk")
    drop(site, jpegs[8:16])
    wait(site, lambda: "cannot file" in site.log(), 30, "no filing error logged")
    time.sleep(10)
    assert proc.poll() is None and "retrying in" in site.log()
    assert len(site.claimed()) + len(site.waiting()) == 8  # all still in the inbox's care
    site.processed.unlink()
    kept.rename(site.processed)
    wait(site, lambda: len(site.filed()) == 16, 120, "did not catch up")
    assert site.stop(proc) == 0
    assert_all_filed_once(site, jpegs[:16])


@pytest.mark.parametrize("mode", ["--polling", "--inotify"])
def test_inbox_share_drops_and_comes_back(sites, jpegs, mode: str):
    site = sites()
    # No periodic rescan in this test: files dropped after the share returns are found only
    # if the daemon watches the folder again.
    proc = site.start(
        "w1",
        mode,
        "--set",
        "inbox.poll_interval=0.5",
        "--set",
        "inbox.rescan_interval=3600",
        "--batch-size",
        "2",  # small steps (a window of 8 files), so the share drops mid-work
    )
    drop(site, jpegs[:30])
    wait(site, lambda: "batch:" in site.log(), 60, "no batch")
    away = site.root / "share-gone"
    site.inbox.rename(away)  # mid-work: files are claimed, being screened, being filed
    time.sleep(8)
    assert proc.poll() is None, site.log()
    assert "is gone" in site.log() or "is not there" in site.log()
    away.rename(site.inbox)
    wait(site, lambda: len(site.filed()) == 30, 90, "the files in flight were not filed after the return")
    drop(site, jpegs[30:36])  # found only by a watcher that works again
    wait(site, lambda: len(site.filed()) == 36, 30, "files dropped after the return were not screened")
    assert site.stop(proc) == 0
    assert_all_filed_once(site, jpegs[:36])
