"""The real daemon, as a subprocess, on real folders and real X-rays.

Files dropped before and while it runs, a file written slowly, a corrupt file, a
duplicate, SIGTERM in the middle of the work and a restart, polling mode, and two
workers sharing one inbox and one PostgreSQL database.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from daemon_harness import Site, real_jpegs, wait_for
from sqlalchemy import create_engine, func, select

from worker.db.schema import audit_events, results

pytest_plugins = ["db_fixtures"]
pytestmark = pytest.mark.slow


@pytest.fixture
def make_site(tmp_path: Path, trained_model: Path):
    sites: list[Site] = []

    def make(db_url: str | None = None) -> Site:
        sites.append(Site(tmp_path, db_url or f"sqlite:///{tmp_path / 'results.db'}", trained_model))
        return sites[-1]

    yield make
    for site in sites:
        site.close()


def test_daemon_screens_what_arrives_before_and_while_it_runs(
    tmp_path, trained_model, full_res_dir, dicom_dir
):
    site = Site(tmp_path, f"sqlite:///{tmp_path / 'results.db'}", trained_model)
    jpegs = real_jpegs(full_res_dir, 6)
    for f in jpegs[:3]:
        shutil.copy(f, site.inbox / f.name)
    proc = site.start()
    shutil.copy(dicom_dir / "WG04_RG1_J2KI.dcm", site.inbox / "study 1.dcm")
    shutil.copy(jpegs[3], site.inbox / jpegs[3].name)
    shutil.copy(jpegs[0], site.inbox / "again.jpeg")  # same content as an earlier file
    (site.inbox / "broken.jpeg").write_bytes(jpegs[4].read_bytes()[:5000])
    data = jpegs[5].read_bytes()
    with (site.inbox / "slow.jpeg").open("wb") as fh:  # a slow copy over a share
        for i in range(0, len(data), len(data) // 6 + 1):
            fh.write(data[i : i + len(data) // 6 + 1])
            fh.flush()
            time.sleep(0.3)
    wait_for(lambda: len(site.filed()) == 8, 60, f"not all filed:\n{site.log()}")
    assert site.stop(proc) == 0
    assert site.waiting() == [] and site.claimed() == []
    failed = sorted(p.name for p in site.failed.rglob("*"))
    assert failed[-2:] == ["broken.jpeg", "broken.jpeg.error.json"]
    sidecar = next(site.failed.rglob("broken.jpeg.error.json"))
    assert sidecar.stat().st_mode & 0o777 == 0o640  # the default umask 027: not world-readable
    assert site.count(results) == 6 and site.count(audit_events) == 8
    assert "again.jpeg: duplicate" in site.log() and "slow.jpeg: " in site.log()
    assert "truncated JPEG" in site.log()


def test_sigterm_mid_run_then_restart_loses_nothing(make_site, full_res_dir):
    site = make_site()
    files = real_jpegs(full_res_dir, 60)
    for f in files:
        shutil.copy(f, site.inbox / f.name)
    proc = site.start("w1", "--batch-size", "4")  # steps of 16 files: SIGTERM lands mid-run
    wait_for(lambda: "batch:" in site.log(), 60, "no batch finished")
    assert site.stop(proc) == 0
    assert "stopped:" in site.log()
    assert 0 < len(site.filed()) < 60  # stopped in the middle
    proc = site.start("w1", "--batch-size", "4")
    wait_for(lambda: len(site.filed()) == 60, 120, f"not all filed after restart:\n{site.log()}")
    assert site.stop(proc) == 0
    assert sorted(p.name for p in site.filed()) == sorted(f.name for f in files)
    assert site.count(results) == 60 and site.count(audit_events) == 60


@pytest.mark.postgres
def test_two_polling_workers_share_one_inbox(make_site, full_res_dir, postgres_database):
    url = postgres_database.render_as_string(hide_password=False)
    site = make_site(url)
    # Small steps (a window of 8 files) and quick polls, so that both workers find work.
    fast = ("--polling", "--batch-size", "2", "--set", "inbox.poll_interval=0.5")
    workers = [site.start("a", *fast), site.start("b", *fast)]
    files = real_jpegs(full_res_dir, 80)
    for f in files:
        shutil.copy(f, site.inbox / f.name)
    wait_for(lambda: len(site.filed()) == 80, 180, f"not all filed:\n{site.log('a')}\n{site.log('b')}")
    assert [site.stop(p) for p in workers] == [0, 0]
    assert sorted(p.name for p in site.filed()) == sorted(f.name for f in files)
    assert site.count(audit_events) == 80 and site.count(results) == 80
    engine = create_engine(url)
    with engine.connect() as conn:
        per_worker = dict(
            conn.execute(select(audit_events.c.worker_id, func.count()).group_by("worker_id")).all()
        )
    engine.dispose()
    assert set(per_worker) == {"a", "b"}, per_worker  # both did some of the work
    assert sum(per_worker.values()) == 80
    assert (site.inbox / ".xray-screen" / "a").is_dir()


def test_the_names_that_crash_looped_the_daemon_are_filed_and_it_stays_up(make_site, full_res_dir):
    """Issue 18: a Latin-1 name killed ``watch`` in its claim (each restart died on it again,
    and the files claimed with it waited forever). The real daemon, 13 awkward names, one run."""
    site = make_site()
    proc = site.start()
    names = [
        b"\xe9t\xe9.jpeg",
        b" leading space.jpeg",
        b"b" * 245 + b".jpeg",  # 250 bytes: with the claim's prefix, past NAME_MAX
        b"trailing dot.",
        b"new\nline.jpeg",
        b"tab\tname.jpeg",
        b"ansi \x1b[2J\x1b]0;pwned\x07.jpeg",
        b'quote\'s "$(reboot)".jpeg',
        "Röntgen-胸部.jpeg".encode(),
        b"Case.jpeg",
        b"case.jpeg",
        b"\xff\xfe.jpeg",
        "e\u0301.jpeg".encode(),
    ]
    landing = site.root / "landing"
    landing.mkdir()
    for raw, src in zip(names, real_jpegs(full_res_dir, len(names)), strict=True):
        shutil.copy(src, landing / "x")
        os.rename(landing / "x", os.fsencode(site.inbox) + b"/" + raw)  # noqa: PTH104 - a bytes name
    wait_for(lambda: len(site.filed()) == len(names) or proc.poll() is not None, 60, site.log())
    assert proc.poll() is None, f"the daemon died:\n{site.log()}"
    assert site.stop(proc) == 0
    filed = sorted(os.fsencode(p.name) for p in site.filed())
    assert filed == sorted(names)  # each under its own name
    assert all(p.is_relative_to(site.processed) for p in site.filed())
    assert site.waiting() == [] and site.claimed() == []
    assert len(site.audit_rows()) == len(names)
    log = site.log()
    assert "Traceback" not in log and "\x1b" not in log
    assert "\\xe9t\\xe9.jpeg: " in log
