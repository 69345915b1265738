"""Any name a POSIX share can hold (any bytes but '/' and NUL, up to 255) through the daemon,
the scan, predict and the error sidecar: claimed, screened and filed under its own name,
recorded once in a form that maps back to it, logged on one line.

The first case is the crash loop of issue 18: a Latin-1 name made ``watch`` die in the
claim's name fitting (``stem.encode()``), and ``scan`` die on the same name.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import tempfile
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner
from hostile_files import encode, grey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, select
from test_daemon import Site, make_site

from worker.cli.main import cli
from worker.config import InferenceSettings
from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.schema import audit_events, scanned_files
from worker.db.store import Store
from worker.logs import OneLineFormatter
from worker.model.predictor import Predictor
from worker.names import NAME_MAX, from_stored
from worker.scan.local import Scanner
from worker.sources.claim import WORK_DIR
from worker.sources.walk import walk_files

pytest_plugins = ["db_fixtures"]

NFC = unicodedata.normalize("NFC", "Röntgen-é.jpeg")
NFD = unicodedata.normalize("NFD", "Röntgen-é.jpeg")
AWKWARD: list[bytes] = [
    b"\xe9t\xe9.jpeg",  # Latin-1, from an old Windows client over SMB: the crash loop
    b"\xe9" * (NAME_MAX - len(".jpeg")) + b".jpeg",  # 255 bytes, none of them UTF-8
    b"a" * (NAME_MAX - len(".jpeg")) + b".jpeg",  # 255 bytes: no room for the claim's prefix
    "胸".encode() * 83 + b".jpeg",  # 254 bytes of 3-byte letters
    b" leading space.jpeg",
    b"trailing dot.",
    b"trailing dots...",
    b"ansi \x1b[31mred\x1b[0m \x1b]0;title\x07.jpeg",
    b"c1 \xc2\x9b2J csi.jpeg",  # U+009B, a one-character CSI
    b"new\nline\r.jpeg",
    b"tab\there.jpeg",
    b'quote\'s "$(rm -rf ~)" `x`.jpeg',
    b"-rf --help.jpeg",
    b"Case.jpeg",
    b"case.jpeg",  # a case-only twin
    NFC.encode(),
    NFD.encode(),  # the same letters, decomposed, as a macOS client writes them
    b"\xff\xfe\x9b\x80.png",  # invalid UTF-8 with C1 bytes
    "bidi \u202egpj.exe".encode(),  # a right-to-left override
]


@pytest.fixture
def site(tmp_path: Path, loaded_model) -> Site:
    return make_site(tmp_path, loaded_model)


def jpeg(n: int) -> bytes:
    """A small valid JPEG, different for each ``n``: every file is really screened."""
    return encode(grey((96 + n, 80)), "JPEG")


def place(folder: Path, names: list[bytes], start: int = 0) -> dict[bytes, bytes]:
    """Write a distinct JPEG under each raw name in ``folder``; name -> content."""
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    for n, raw in enumerate(names, start):
        contents[raw] = jpeg(n)
        with open(os.fsencode(folder) + b"/" + raw, "wb") as fh:  # noqa: PTH123 - a bytes path
            fh.write(contents[raw])
    return contents


def raw_names(folder: Path) -> set[bytes]:
    return {e.name for e in os.scandir(os.fsencode(folder))}


def rows(url: str, table) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(table)).all())
    finally:
        engine.dispose()


def one_line_logs(caplog) -> list[str]:
    formatter = OneLineFormatter("%(message)s")
    lines = [formatter.format(r) for r in caplog.records if r.exc_info is None]
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x9b" not in line, line
        line.encode("utf-8")
    return lines


def test_every_awkward_name_is_claimed_screened_filed_and_recorded_once(site: Site, caplog):
    caplog.set_level(logging.INFO)
    contents = place(site.inbox, AWKWARD)
    daemon = site.daemon()
    site.drain(daemon, rounds=12)  # today's code: UnicodeEncodeError out of step()

    audits = site.rows(audit_events)
    assert len(audits) == len(AWKWARD)
    by_source = {os.fsencode(Path(from_stored(a.source_path, a.source_path_hex)).name): a for a in audits}
    assert set(by_source) == set(AWKWARD)  # each recorded once, under a path that maps back
    for raw, audit in by_source.items():
        assert audit.outcome == "screened", (raw, audit.reason)
        destination = Path(from_stored(audit.destination_path, audit.destination_path_hex))
        assert os.fsencode(destination.name) == raw  # filed under its own name
        assert destination.read_bytes() == contents[raw]
        assert destination.is_relative_to(site.folders.processed)
        audit.source_path.encode("utf-8")  # the text column is valid UTF-8
        assert (audit.source_path_hex is None) == (
            os.fsencode(audit.source_path) == os.fsencode(site.inbox) + b"/" + raw
        )
    assert raw_names(site.inbox) == {WORK_DIR.encode()}
    assert sorted(raw_names(site.inbox / WORK_DIR / "w1")) == [b".alive", b".lock"]
    # one log line per file, escaped: no newline, no terminal escape, no undecodable byte
    filed = [line for line in one_line_logs(caplog) if " -> " in line]
    assert len(filed) == len(AWKWARD)
    assert any("\\xe9t\\xe9.jpeg: " in line for line in filed)
    assert any("ansi \\x1b[31mred" in line for line in filed)


def test_a_latin1_name_that_fails_gets_a_valid_utf8_sidecar_naming_it(site: Site):
    raw = b"r\xe9sum\xe9.jpeg"
    with open(os.fsencode(site.inbox) + b"/" + raw, "wb") as fh:  # noqa: PTH123
        fh.write(b"not an image at all\n")
    site.drain(site.daemon(), rounds=4)
    [audit] = site.rows(audit_events)
    assert audit.outcome == "failed" and audit.reason.startswith("not an image: the file is text")
    [sidecar] = site.folders.failed.rglob("*.error.json")
    details = json.loads(sidecar.read_bytes().decode("utf-8"))  # valid UTF-8 JSON
    assert details["file"] == "r\\xe9sum\\xe9.jpeg" and bytes.fromhex(details["file_hex"]) == raw
    assert bytes.fromhex(details["source_hex"]) == raw
    assert os.fsencode(sidecar.name) == raw + b".error.json"


@pytest.fixture
def archive_db(tmp_path: Path, db_url: str) -> str:
    engine = make_engine(db_url, create=True)
    migrate.upgrade(engine)
    engine.dispose()
    return db_url


def scan(db_url: str, model: Path, root: Path, *args: str):
    argv = ["scan", str(root), "--db", db_url, "--model", str(model), "--trust-model", "--batch-size", "4"]
    return CliRunner().invoke(cli, [*argv, *args])


def test_scan_records_indexes_and_outputs_every_awkward_name(tmp_path: Path, archive_db: str, trained_model):
    archive = tmp_path / "archive"
    contents = place(archive / "2019", AWKWARD)
    literal = b"\\xe9t\\xe9.jpeg"  # reads like the Latin-1 name as text; another file
    contents.update(place(archive / "2019", [literal], start=len(AWKWARD)))
    before = {raw: (archive / "2019" / os.fsdecode(raw)).stat().st_mtime_ns for raw in contents}
    out = tmp_path / "night.csv"

    result = scan(archive_db, trained_model, archive, "--output", str(out))  # today: the scan dies
    assert result.exit_code == 0, result.output
    audits = rows(archive_db, audit_events)
    assert sorted(
        os.fsencode(Path(from_stored(a.source_path, a.source_path_hex)).name) for a in audits
    ) == sorted(contents)
    assert all(a.outcome == "screened" for a in audits), [a.reason for a in audits]
    index = rows(archive_db, scanned_files)
    got = sorted(os.fsencode(Path(from_stored(r.path, r.path_hex or None)).name) for r in index)
    assert got == sorted(contents)  # one index row each, the look-alike names too
    lines = list(csv.DictReader(io.StringIO(out.read_bytes().decode("utf-8"), newline="")))
    named = {os.fsencode(Path(from_stored(r["path"], r["path_hex"] or None)).name) for r in lines}
    assert named == set(contents)
    # read-only: nothing in the archive changed
    assert {raw: (archive / "2019" / os.fsdecode(raw)).stat().st_mtime_ns for raw in contents} == before

    again = scan(archive_db, trained_model, archive)
    assert again.exit_code == 0, again.output
    assert len(rows(archive_db, audit_events)) == len(contents)  # every name skipped by the index


def test_predict_prints_one_line_per_awkward_name_and_json_that_maps_back(tmp_path: Path, trained_model):
    folder = tmp_path / "films"
    place(folder, AWKWARD)
    plain = CliRunner().invoke(cli, ["predict", str(folder), "--model", str(trained_model), "--trust-model"])
    assert plain.exit_code == 0, plain.output
    lines = [line for line in plain.stdout.splitlines() if line]
    assert len(lines) == len(AWKWARD)
    assert not any("\x1b" in line or "\x9b" in line or "\u202e" in line for line in lines)
    as_json = CliRunner().invoke(
        cli, ["predict", str(folder), "--json", "--model", str(trained_model), "--trust-model"]
    )
    assert as_json.exit_code == 0, as_json.output
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    names = {os.fsencode(Path(from_stored(r["path"], r.get("path_hex"))).name) for r in records}
    assert names == set(AWKWARD)


# -- property-based: arbitrary byte names -------------------------------------------

component = st.binary(min_size=1, max_size=NAME_MAX).filter(
    lambda b: b"/" not in b and b"\0" not in b and not b.startswith(b".")  # hidden entries are skipped
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(component, min_size=1, max_size=4, unique=True))
def test_arbitrary_byte_names_through_the_daemon_are_filed_once_under_their_own_name(site: Site, names):
    inbox, processed, failed = site.inbox, site.folders.processed, site.folders.failed
    for folder in (processed, failed):
        shutil.rmtree(folder, ignore_errors=True)
    with site.store.engine.begin() as conn:
        conn.execute(audit_events.delete())
    for n, raw in enumerate(names):
        with open(os.fsencode(inbox) + b"/" + raw, "wb") as fh:  # noqa: PTH123
            fh.write(b"text %d\n" % n)  # fails fast in the decoder: no model time
    daemon = site.daemon()
    site.drain(daemon, rounds=3)
    audits = site.rows(audit_events)
    assert sorted(
        os.fsencode(Path(from_stored(a.source_path, a.source_path_hex)).name) for a in audits
    ) == sorted(names)
    for audit in audits:
        destination = Path(from_stored(audit.destination_path, audit.destination_path_hex))
        raw = os.fsencode(Path(from_stored(audit.source_path, audit.source_path_hex)).name)
        assert audit.outcome == "failed" and audit.reason.startswith("not an image: the file is text")
        assert os.fsencode(destination.name) == raw and destination.exists()
    assert raw_names(inbox) == {WORK_DIR.encode()}


@pytest.fixture
def scan_site(tmp_path: Path, loaded_model):
    url = f"sqlite:///{tmp_path / 'scan.db'}"
    migrate.upgrade(make_engine(url, create=True))
    return tmp_path, Store(url), Predictor(loaded_model, InferenceSettings(batch_size=4))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(component, min_size=1, max_size=4, unique=True))
def test_arbitrary_byte_names_in_an_archive_are_recorded_and_indexed_once(scan_site, names):
    tmp_path, store, predictor = scan_site
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    for n, raw in enumerate(names):
        with open(os.fsencode(root) + b"/" + raw, "wb") as fh:  # noqa: PTH123
            fh.write(b"text %d %s\n" % (n, os.fsencode(root)))
    for _ in range(2):  # the second run skips every file through the index
        Scanner(files=walk_files([root]), predictor=predictor, store=store, worker_host="test").run()
    with store.engine.connect() as conn:
        audits = conn.execute(select(audit_events)).all()
        index = conn.execute(select(scanned_files)).all()
    mine = [a for a in audits if from_stored(a.source_path, a.source_path_hex).startswith(str(root) + "/")]
    assert sorted(
        os.fsencode(Path(from_stored(a.source_path, a.source_path_hex)).name) for a in mine
    ) == sorted(names)
    assert all(a.outcome == "failed" and a.reason.startswith("not an image: the file is text") for a in mine)
    indexed = [r for r in index if from_stored(r.path, r.path_hex or None).startswith(str(root) + "/")]
    assert sorted(os.fsencode(Path(from_stored(r.path, r.path_hex or None)).name) for r in indexed) == sorted(
        names
    )
