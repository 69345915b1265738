"""Hostile and odd files dropped into a watched inbox (issue 7), through one in-process daemon.

One table: each case names the entry it puts in the inbox, how to build it, and where
README.md ("Watching an inbox") says it ends up:

- ``processed``: in ``processed/<LABEL>/<date>/`` under its own name, one audit row
  (``screened`` or ``duplicate``);
- ``failed``: in ``failed/<date>/`` with ``<name>.error.json``, one audit row ``failed``
  whose reason starts with the given text;
- ``left``: still in the inbox, untouched, no audit row;
- ``gone``: removed by someone else before the daemon could claim it: no audit row, no error.

Every case goes into the inbox at once, one daemon works through them in 30 steps, and any
exception would escape from ``step()`` and fail the test.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from dicom_factory import BASIC_TEXT_SR, gradient
from hostile_files import (
    JPEG_XL,
    dicom_bytes,
    dicom_with_syntax,
    encode,
    grey,
    jpeg_bytes,
    jpeg_claiming,
    png16_bytes,
    png_bytes,
    png_claiming,
    rle_overrun,
)
from PIL import Image
from test_daemon import Site, make_site

import worker.pipeline.item as item_module
from worker.daemon import Daemon
from worker.db.schema import audit_events, results
from worker.sinks.filing import NAME_MAX
from worker.sources.claim import WORK_DIR
from worker.sources.inbox import Inbox

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "person1946_bacteria_4874.jpeg"

Build = Callable[[Path, Path], None]  # (where the entry goes, a scratch folder outside the inbox)


@dataclass(frozen=True)
class Case:
    name: str  # path relative to the inbox
    build: Build
    outcome: str  # processed | failed | left | gone
    reason: str = ""  # failed: the audit reason starts with this
    trick: str = ""  # grows: appended to before every step; vanishes: deleted between take and claim;
    # unreadable: reading it raises EACCES (the tests run as root, whom chmod 000 does not stop)


def content(make: Callable[[Path], bytes]) -> Build:
    def build(path: Path, scratch: Path) -> None:
        path.write_bytes(make(scratch))

    return build


def ramp_jpeg(n: int) -> Build:
    """A small valid JPEG, different for each ``n``, so every processed case is really screened."""
    return content(lambda _: encode(grey((96 + n, 80)), "JPEG"))


def read_only(path: Path, scratch: Path) -> None:
    ramp_jpeg(9)(path, scratch)
    path.chmod(0o444)


def symlink_to_file(path: Path, scratch: Path) -> None:
    target = scratch / "outside.jpeg"
    target.write_bytes(jpeg_bytes())
    path.symlink_to(target)


def symlink_to_folder(path: Path, scratch: Path) -> None:
    (scratch / "outside-folder").mkdir()
    (scratch / "outside-folder" / "secret.jpeg").write_bytes(jpeg_bytes())
    path.symlink_to(scratch / "outside-folder")


def fifo(path: Path, scratch: Path) -> None:
    os.mkfifo(path)


def folder(path: Path, scratch: Path) -> None:
    path.mkdir()


LONG = "a" * (NAME_MAX - len(".jpeg")) + ".jpeg"  # 255 bytes
LONG_UNICODE = "é" * ((NAME_MAX - len(".png")) // 2) + ".png"  # 254 bytes, 2 per letter

CASES = [
    # unreadable content: failed/, with the decoder's reason
    Case("truncated.jpeg", content(lambda _: jpeg_bytes()[:400]), "failed", "truncated JPEG"),
    Case("truncated.png", content(lambda _: png_bytes()[:3000]), "failed", "truncated PNG"),
    Case("empty.dcm", content(lambda _: b""), "failed", "empty file (0 bytes)"),
    Case("notes.png", content(lambda _: b"patient notes\n"), "failed", "not an image: the file is text"),
    Case("bomb.png", content(lambda _: png_claiming(40000, 40000)), "failed", "image too large: 40000x40000"),
    Case(
        "huge.jpeg", content(lambda _: jpeg_claiming(65000, 65000)), "failed", "image too large: 65000x65000"
    ),
    Case("blank.png", content(lambda _: encode(Image.new("L", (64, 64)), "PNG")), "failed", "image is blank"),
    Case("scan.gif", content(lambda _: b"GIF89a" + bytes(100)), "failed", "unsupported file format: GIF"),
    Case(
        "no-pixels.dcm",
        content(lambda t: dicom_bytes(t, None)),
        "failed",
        "DICOM has no pixel data (Computed Radiography Image Storage): not an image",
    ),
    Case(
        "report.dcm",
        content(lambda t: dicom_bytes(t, None, sop_class=BASIC_TEXT_SR)),
        "failed",
        "DICOM has no pixel data (Basic Text SR Storage): not an image",
    ),
    Case(
        "cine.dcm",
        content(lambda t: dicom_bytes(t, gradient(), frames=4)),
        "failed",
        "multi-frame DICOM (4 frames)",
    ),
    Case(
        "jpeg-xl.dcm",
        content(lambda t: dicom_with_syntax(t, JPEG_XL)),
        "failed",
        f"DICOM transfer syntax {JPEG_XL} (",  # then its name, once pynetdicom is imported
    ),
    Case(
        "bad-jpeg.dcm",
        content(lambda t: dicom_with_syntax(t, "1.2.840.10008.1.2.4.50")),
        "failed",
        "corrupt DICOM pixel data (JPEG Baseline (Process 1))",
    ),
    Case("rle-overrun.dcm", content(rle_overrun), "failed", "corrupt DICOM pixel data (RLE Lossless)"),
    Case(LONG_UNICODE, content(lambda _: b"text again\n"), "failed", "not an image: the file is text"),
    Case(
        "unreadable.jpeg", ramp_jpeg(10), "failed", "cannot read file: Permission denied", trick="unreadable"
    ),
    # odd but readable images: processed/
    Case("deep.png", content(lambda _: png16_bytes()), "processed"),
    Case("cmyk.jpeg", content(lambda _: encode(grey().convert("CMYK"), "JPEG")), "processed"),
    Case("palette.png", content(lambda _: encode(grey().convert("P"), "PNG")), "processed"),
    Case("actually-a-jpeg.png", ramp_jpeg(1), "processed"),
    Case("chest film 2024 01.jpeg", ramp_jpeg(2), "processed"),
    Case("Röntgen-胸部-ü.jpeg", ramp_jpeg(3), "processed"),
    Case("two\nlines.jpeg", ramp_jpeg(4), "processed"),
    Case("-rf --help.jpeg", ramp_jpeg(5), "processed"),
    Case(LONG, ramp_jpeg(6), "processed"),
    Case("read-only.jpeg", read_only, "processed"),
    Case("ward1/chest.jpeg", ramp_jpeg(7), "processed"),  # the same name (and content) in two
    Case("ward2/chest.jpeg", ramp_jpeg(7), "processed"),  # subfolders: chest.jpeg and chest-1.jpeg
    # never taken: left in the inbox
    Case("link-out.jpeg", symlink_to_file, "left"),
    Case("link-folder", symlink_to_folder, "left"),
    Case("pipe.png", fifo, "left"),
    Case("x.png", folder, "left"),
    Case(".hidden.jpeg", ramp_jpeg(11), "left"),
    Case("upload.jpeg.part", ramp_jpeg(12), "left"),
    Case("growing.jpeg", content(lambda _: jpeg_bytes()[:1000]), "left", trick="grows"),
    # taken by someone else between the daemon seeing it and claiming it
    Case("vanishes.jpeg", ramp_jpeg(13), "gone", trick="vanishes"),
]


@pytest.fixture
def site(tmp_path: Path, loaded_model) -> Site:
    return make_site(tmp_path, loaded_model)


def with_tricks(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the 'vanishes' and 'unreadable' cases happen inside the daemon's own steps."""
    vanishing = {c.name for c in CASES if c.trick == "vanishes"}
    unreadable = {c.name for c in CASES if c.trick == "unreadable"}
    real_take, real_hash = daemon.inbox.take, item_module.sha256_file

    def take(limit: int) -> list[Path]:
        paths = real_take(limit)
        for path in paths:
            if str(path.relative_to(daemon.inbox.root)) in vanishing:
                path.unlink()  # another program took it after the inbox saw it
        return paths

    def sha256_file(path: Path) -> tuple[str, int]:
        if path.name.partition("~")[2] in unreadable:  # claimed as <token>~<name>
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_hash(path)

    monkeypatch.setattr(daemon.inbox, "take", take)
    monkeypatch.setattr(item_module, "sha256_file", sha256_file)


def test_hostile_inputs_end_where_the_readme_says(site: Site, tmp_path: Path, monkeypatch, caplog):
    assert len({c.name for c in CASES}) == len(CASES) >= 25
    scratch = tmp_path / "outside"
    scratch.mkdir()
    for case in CASES:
        path = site.inbox / case.name
        path.parent.mkdir(exist_ok=True)
        case.build(path, scratch)
    originals = {
        c.name: (site.inbox / c.name).read_bytes() for c in CASES if c.outcome in ("processed", "failed")
    }
    outside = {p: p.read_bytes() for p in scratch.rglob("*") if p.is_file()}
    growing = [site.inbox / c.name for c in CASES if c.trick == "grows"]

    daemon = site.daemon()
    # "Still being written" needs a stability window: with none (stability 0, as in
    # test_daemon) a file is taken as soon as two looks in one step agree. So: 2 s, on a clock
    # that moves 1 s per step.
    clock = [0.0]
    daemon.inbox = Inbox(
        site.inbox, recursive=True, stability_seconds=2, rescan_interval=0, clock=lambda: clock[0]
    )
    with_tricks(daemon, monkeypatch)
    caplog.set_level(logging.INFO)
    daemon.recover()
    for _ in range(30):
        for path in growing:
            with path.open("ab") as fh:
                fh.write(b"\0" * 100)
        daemon.step()  # an exception here is a failure of the test
        clock[0] += 1

    audits = {Path(a.source_path).relative_to(site.inbox).as_posix(): a for a in site.rows(audit_events)}
    sidecars = {}
    for sidecar in site.folders.failed.rglob("*.error.json"):
        details = json.loads(sidecar.read_text())
        sidecars[details["file"]] = details
    for case in CASES:
        entry = site.inbox / case.name
        audit = audits.pop(case.name, None)
        if case.outcome in ("left", "gone"):
            assert audit is None, case.name
            assert os.path.lexists(entry) is (case.outcome == "left"), case.name
            continue
        assert audit is not None, f"{case.name}: no audit row"
        assert not os.path.lexists(entry), f"{case.name}: still in the inbox"
        moved = Path(audit.destination_path)
        assert moved.read_bytes() == originals[case.name], case.name  # the file itself, unchanged
        if case.outcome == "processed":
            assert audit.outcome in ("screened", "duplicate") and audit.reason is None, (
                case.name,
                audit.reason,
            )
            label, _day, _name = moved.relative_to(site.folders.processed).parts
            assert label in ("NORMAL", "PNEUMONIA"), case.name
        else:
            assert audit.outcome == "failed" and audit.reason.startswith(case.reason), (
                case.name,
                audit.reason,
            )
            _day, _name = moved.relative_to(site.folders.failed).parts
            assert sidecars[moved.name]["reason"] == audit.reason
        if not case.name.startswith("ward"):
            assert moved.name == Path(case.name).name, case.name
    assert audits == {}  # nothing else was recorded

    # the same name from two subfolders: nothing overwritten
    wards = sorted(Path(a.destination_path).name for a in site.rows(audit_events) if "ward" in a.source_path)
    assert wards == ["chest-1.jpeg", "chest.jpeg"]
    # a read-only file keeps its mode
    [read_only_row] = [a for a in site.rows(audit_events) if a.source_path.endswith("read-only.jpeg")]
    assert stat.S_IMODE(Path(read_only_row.destination_path).stat().st_mode) == 0o444
    # links are never followed: they stay links, and what they point at is untouched
    assert (site.inbox / "link-out.jpeg").readlink() == scratch / "outside.jpeg"
    assert (site.inbox / "link-folder").is_symlink()
    assert {p: p.read_bytes() for p in scratch.rglob("*") if p.is_file()} == outside
    assert stat.S_ISFIFO((site.inbox / "pipe.png").lstat().st_mode)
    assert (site.inbox / "x.png").is_dir() and not any((site.inbox / "x.png").iterdir())
    # nothing is left claimed, and nothing else appeared in the inbox
    assert sorted(p.name for p in (site.inbox / WORK_DIR / "w1").iterdir()) == [".alive", ".lock"]
    inbox_now = {
        p.relative_to(site.inbox).as_posix() for p in site.inbox.rglob("*") if WORK_DIR not in p.parts
    }
    assert inbox_now == {c.name for c in CASES if c.outcome == "left"} | {"ward1", "ward2"}
    # one warning for each link and FIFO, however often the inbox was rescanned (30 times)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "worker.sources.inbox" and r.levelno == logging.WARNING
    ]
    assert sorted(warnings) == sorted(
        f"leaving {site.inbox / n} in the inbox: a {kind} is never followed or moved"
        for n, kind in [
            ("link-out.jpeg", "symbolic link"),
            ("link-folder", "symbolic link"),
            ("pipe.png", "FIFO"),
        ]
    )
    # no decoder error escaped into the predictor's "unexpected" net
    assert not [r for r in caplog.records if r.name.startswith("worker") and r.levelno >= logging.ERROR]
    assert len(site.rows(results)) == sum(a.outcome == "screened" for a in site.rows(audit_events))

    # the daemon is still up: a real X-ray dropped afterwards is screened by it
    shutil.copy(SAMPLE, site.inbox / SAMPLE.name)
    for _ in range(4):
        daemon.step()
        clock[0] += 1
    daemon.work.close()
    [last] = [a for a in site.rows(audit_events) if a.source_path.endswith(SAMPLE.name)]
    assert last.outcome == "screened"


def test_a_file_still_being_written_is_taken_once_stable(site: Site):
    """README: left alone until its size and mtime are unchanged for stability_seconds."""
    now = [0.0]
    daemon = site.daemon()
    daemon.inbox = Inbox(site.inbox, stability_seconds=2.0, rescan_interval=0, clock=lambda: now[0])
    path = site.inbox / "slow-copy.jpeg"
    data = encode(grey((300, 200)), "JPEG")
    with path.open("wb") as fh:
        for second in range(4):  # one part a second, as a slow share would write it
            now[0] = float(second)
            fh.write(data[second * len(data) // 4 : (second + 1) * len(data) // 4])
            fh.flush()
            daemon.step()
            assert path.exists() and site.rows(audit_events) == [], f"taken after {second} s"
    now[0] = 4.0
    daemon.step()
    assert path.exists()  # last change at 3 s: not yet stable
    now[0] = 5.5
    daemon.step()
    daemon.work.close()
    [audit] = site.rows(audit_events)
    assert audit.outcome == "screened" and not path.exists()
    assert Path(audit.destination_path).read_bytes() == data


def test_a_file_that_vanishes_before_its_claim_is_no_error(site: Site, monkeypatch, caplog):
    """WorkArea.claim returns None when the file is gone; the daemon records nothing."""
    daemon = site.daemon()
    ghost = site.inbox / "ghost.jpeg"
    monkeypatch.setattr(daemon.inbox, "take", lambda limit: [ghost])
    caplog.set_level(logging.WARNING)
    assert daemon.step() == 0
    daemon.work.close()
    assert site.rows(audit_events) == [] and caplog.records == []
    assert not site.folders.processed.exists() and not site.folders.failed.exists()
