"""Filing, claiming and finding files: no overwrite, no loss, one owner per file."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.sinks import filing
from worker.sinks.filing import dated_folder, fit, move_no_clobber, safe_component, write_error_sidecar
from worker.sources.claim import WORK_DIR, WorkArea
from worker.sources.inbox import Inbox


def test_move_never_overwrites(tmp_path: Path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "a.png").write_text("first")
    src = tmp_path / "a.png"
    src.write_text("second")
    moved = move_no_clobber(src, dest, "a.png")
    assert moved.name == "a-1.png"
    assert (dest / "a.png").read_text() == "first" and moved.read_text() == "second"
    assert not src.exists()


def test_move_across_file_systems_copies_then_deletes(tmp_path: Path, monkeypatch):
    real_link = os.link

    def no_cross_link(src, dst, **kw):
        if "out" in str(dst) and "partial" not in str(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, **kw)

    monkeypatch.setattr(filing.os, "link", no_cross_link)
    src = tmp_path / "scan.dcm"
    src.write_bytes(b"x" * 3_000_000)
    moved = move_no_clobber(src, tmp_path / "out", "scan.dcm")
    assert moved.read_bytes() == b"x" * 3_000_000 and not src.exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["scan.dcm"]  # no temporary left


def test_move_without_hard_links(tmp_path: Path, monkeypatch):
    def no_links(src, dst, **kw):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(filing.os, "link", no_links)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.jpg").write_text("old")
    src = tmp_path / "a.jpg"
    src.write_text("new")
    assert move_no_clobber(src, tmp_path / "out", "a.jpg").name == "a-1.jpg"
    assert (tmp_path / "out" / "a.jpg").read_text() == "old"


def test_long_and_odd_names(tmp_path: Path):
    long = "x" * 250 + ".jpeg"
    assert len(fit(long, "-12").encode()) <= 255 and fit(long, "-12").endswith("-12.jpeg")
    assert (
        safe_component("../etc") == ".._etc" and safe_component("..") == "_.." and safe_component("") == "_"
    )
    for name in ["-rf.png", "new\nline.jpg", "ünïcødé 画像.png", "x" * 255]:
        src = tmp_path / "in" / name
        src.parent.mkdir(exist_ok=True)
        src.write_text(name)
        moved = move_no_clobber(src, tmp_path / "out", name)
        assert moved.parent == tmp_path / "out" and moved.read_text() == name
        moved2 = tmp_path / "in" / name
        moved2.write_text("again")
        assert len(move_no_clobber(moved2, tmp_path / "out", name).name.encode()) <= 255


def test_error_sidecar_and_dated_folder(tmp_path: Path):
    folder = dated_folder(tmp_path, datetime(2026, 11, 25, 10, 0), "PNEUMONIA")
    assert folder == tmp_path / "PNEUMONIA" / "2026-11-25"
    bad = tmp_path / ("y" * 255)
    bad.write_text("?")
    sidecar = write_error_sidecar(bad, {"reason": "truncated JPEG"})
    assert sidecar.name.endswith(".error.json") and len(sidecar.name.encode()) <= 255
    assert json.loads(sidecar.read_text()) == {"file": bad.name, "reason": "truncated JPEG"}


def test_claims_are_exclusive_under_a_race(tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    files = [inbox / f"{i}.png" for i in range(200)]
    for f in files:
        f.write_text(f.name)
    areas = [WorkArea(inbox, "a"), WorkArea(inbox, "b")]
    won: list[list] = [[], []]

    def grab(i: int) -> None:
        for f in files:
            claimed = areas[i].claim(f)
            if claimed:
                won[i].append(claimed)

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won[0]) + len(won[1]) == 200
    sources = sorted(c.source for c in won[0] + won[1])
    assert sources == sorted(f.name for f in files)
    pending = areas[0].pending() + areas[1].pending()
    assert sorted(c.source for c in pending) == sources
    assert all(c.path.read_text() == c.name for c in pending)


def test_one_live_worker_per_id_and_adoption_of_dead_ones(tmp_path: Path):
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    (inbox / "sub" / "a.png").write_text("a")
    dead = WorkArea(inbox, "dead")
    with pytest.raises(ConfigError, match="already using"):
        WorkArea(inbox, "dead")
    claimed = dead.claim(inbox / "sub" / "a.png")
    dead.close()
    os.utime(inbox / WORK_DIR / "dead" / ".alive", (0, 0))
    live = WorkArea(inbox, "live")
    [adopted] = live.adopt_abandoned(lease_seconds=600)
    assert adopted.source == "sub/a.png" and adopted.token == claimed.token
    assert live.pending() == [adopted] and adopted.path.read_text() == "a"
    assert live.adopt_abandoned(lease_seconds=600) == []  # nothing left to take


def test_a_live_worker_is_not_adopted_and_two_adopters_never_share_a_file(tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(200):
        (inbox / f"{i}.png").write_text(str(i))
    dead, alive = WorkArea(inbox, "dead"), WorkArea(inbox, "alive")
    for i in range(200):
        assert (dead if i % 2 else alive).claim(inbox / f"{i}.png") is not None
    dead.close()
    os.utime(inbox / WORK_DIR / "dead" / ".alive", (0, 0))
    adopters = [WorkArea(inbox, "a"), WorkArea(inbox, "b")]
    won: list[list] = [[], []]

    def adopt(i: int) -> None:
        won[i] += adopters[i].adopt_abandoned(lease_seconds=600)

    threads = [threading.Thread(target=adopt, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sources = sorted(c.source for c in won[0] + won[1])
    assert sources == sorted(f"{i}.png" for i in range(1, 200, 2))  # each odd file once, no even one
    assert sorted(c.source for c in adopters[0].pending() + adopters[1].pending()) == sources
    assert len(alive.pending()) == 100 and dead.pending() == []


def test_inbox_waits_for_stable_files_and_skips_odd_entries(tmp_path: Path):
    now = [0.0]
    inbox = Inbox(tmp_path, stability_seconds=2.0, clock=lambda: now[0], rescan_interval=0)
    (tmp_path / "a.jpeg").write_bytes(b"1")
    (tmp_path / "b.dcm.part").write_bytes(b"1")
    (tmp_path / ".hidden.png").write_bytes(b"1")
    (tmp_path / "x.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "link.png").symlink_to("/etc/hostname")
    assert inbox.take(10) == []  # first sighting
    now[0] = 1.0
    with (tmp_path / "a.jpeg").open("ab") as fh:  # still being written
        fh.write(b"2")
    assert inbox.take(10) == []
    now[0] = 2.5
    assert inbox.take(10) == []  # changed at 1.0: not stable yet
    now[0] = 3.1
    assert inbox.take(10) == [tmp_path / "a.jpeg"]
    now[0] = 10
    assert inbox.take(10) == []  # nothing else is ever ready
    assert (tmp_path / "link.png").is_symlink() and (tmp_path / "pipe.png").exists()


def test_a_move_interrupted_between_link_and_unlink_is_finished_not_copied(tmp_path: Path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "a.png").write_text("another file that took the name first")
    src = tmp_path / "work" / "t1~a.png"
    src.parent.mkdir()
    src.write_text("mine")
    os.link(src, dest / "a-1.png")  # the crash came after the link, before the old name went
    moved = move_no_clobber(src, dest, "a.png")
    assert moved == dest / "a-1.png" and moved.read_text() == "mine"
    assert sorted(p.name for p in dest.iterdir()) == ["a-1.png", "a.png"]  # no a-2.png
    assert not src.exists()


def test_placed_runs_while_the_file_has_both_names(tmp_path: Path):
    src = tmp_path / "a.png"
    src.write_text("x")
    seen = []
    moved = move_no_clobber(src, tmp_path / "out", "a.png", placed=lambda p: seen.append((p, src.exists())))
    assert seen == [(moved, True)] and not src.exists()


def test_a_sidecar_rewritten_after_a_crash_leaves_no_temporary_file(tmp_path: Path):
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"x")
    (tmp_path / ".bad.jpeg.tmp").write_text("half written when the process died")
    write_error_sidecar(bad, {"reason": "truncated JPEG"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jpeg", "bad.jpeg.error.json"]


def test_claim_notes_of_files_filed_before_a_crash_are_dropped(tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("a.png", "b.png"):
        (inbox / name).write_text(name)
    area = WorkArea(inbox, "w1")
    filed, kept = area.claim(inbox / "a.png"), area.claim(inbox / "b.png")
    move_no_clobber(filed.path, tmp_path / "out", filed.name)  # then the process died
    assert [c.token for c in area.pending()] == [kept.token]
    assert sorted(p.name for p in area.root.glob("*.claim.json")) == [f"{kept.token}.claim.json"]


@pytest.mark.parametrize("polling", [True, False], ids=["polling", "inotify"])
def test_inbox_watches_again_when_its_folder_comes_back(tmp_path: Path, polling: bool):
    root = tmp_path / "inbox"
    root.mkdir()
    inbox = Inbox(root, polling=polling, poll_interval=0.1, rescan_interval=3600, stability_seconds=0)
    inbox.start()
    try:
        assert inbox.take(10) == []  # the first call's full scan
        root.rename(tmp_path / "away")  # the share drops
        deadline = time.monotonic() + 5
        while inbox.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not inbox.alive
        time.sleep(0.5)  # long enough for a polling emitter to find its folder gone, and stop
        assert inbox.take(10) == [] and inbox.next_check_in() <= 0.1  # looks for it often
        (tmp_path / "away").rename(root)
        inbox.take(10)  # notices it is back
        assert inbox.alive
        inbox.wakeup.clear()
        (root / "new.png").write_bytes(b"1")
        assert inbox.wakeup.wait(5), "no event for a file dropped after the folder came back"
        taken: list[Path] = []
        while not taken and time.monotonic() < deadline + 5:
            taken = inbox.take(10)
            time.sleep(0.05)
        assert taken == [root / "new.png"]
    finally:
        inbox.stop()
