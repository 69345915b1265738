"""``xray-worker scan`` on a real archive folder: real JPEGs, the small trained model, real databases.

Through the command line where a user would look (the database, the output file, the
summary), in-process where a test needs to see inside (which files reached the model).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from db_support import MODEL_A, audit, result, sha
from fakes import CallbackSink
from sqlalchemy import create_engine, select
from sqlalchemy.exc import IntegrityError

from worker.cli.main import cli
from worker.config import InferenceSettings
from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.schema import audit_events, results, scanned_files
from worker.db.store import FileStamp, ScannedRecord, Store
from worker.errors import TransientError
from worker.model.predictor import Predictor
from worker.pipeline import ports
from worker.pipeline.counts import Counts
from worker.runtime.retry import RetryPolicy
from worker.scan.local import Scanner
from worker.scan.progress import Progress
from worker.sources.walk import FileFilter, walk_files

pytest_plugins = ["db_fixtures"]


@pytest.fixture(scope="module")
def jpegs(full_res_dir: Path) -> list[Path]:
    """Real full-resolution JPEGs, each a distinct content."""
    return sorted((full_res_dir / "train").rglob("*.jpeg"))[:40]


class Archive:
    """An archive folder, a database, and the scan command run on them."""

    def __init__(self, root: Path, db_url: str, model: Path):
        self.root, self.db_url, self.model = root, db_url, model

    def scan(self, *args: str, roots: list[Path] | None = None) -> Result:
        argv = ["scan", *map(str, roots or [self.root]), "--db", self.db_url, "--model", str(self.model)]
        return CliRunner().invoke(cli, [*argv, "--trust-model", "--batch-size", "8", *args])

    def rows(self, table) -> list:
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(select(table)).all())
        finally:
            engine.dispose()

    def snapshot(self) -> dict[str, tuple[str, int, int]]:
        """Every entry below the root: content hash, mtime and mode (folders too)."""
        found = {}
        for path in sorted(self.root.rglob("*")):
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
            found[str(path.relative_to(self.root))] = (digest, st.st_mtime_ns, st.st_mode)
        return found


@pytest.fixture
def archive(tmp_path: Path, db_url: str, trained_model: Path, jpegs: list[Path]) -> Archive:
    """24 X-rays in year/label folders, one truncated JPEG, one text file."""
    root = tmp_path / "archive"
    for i, f in enumerate(jpegs[:24]):
        dest = root / str(2019 + i % 3) / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    (root / "2021" / "broken.jpeg").write_bytes(jpegs[30].read_bytes()[:5000])
    (root / "2021" / "report.txt").write_text("no findings\n")
    engine = make_engine(db_url, create=True)
    migrate.upgrade(engine)
    engine.dispose()
    return Archive(root, db_url, trained_model)


def by_path(rows) -> dict[str, object]:
    return {r.source_path if hasattr(r, "source_path") else r.path: r for r in rows}


def indexed(path: str, content: str | None, *, size: int = 10, outcome: str = "screened") -> ScannedRecord:
    return ScannedRecord(path, MODEL_A, size, 1_700_000_000_123_456_789, content and sha(content), outcome)


def test_the_skip_index_commits_with_its_batch_and_is_updated_in_place(store: Store):
    store.record_batch(
        [result("a")], [audit("a")], [indexed("/arch/a.dcm", "a"), indexed("/arch/x", None, outcome="failed")]
    )
    assert store.scan_index(["/arch/a.dcm", "/arch/x", "/arch/new"], MODEL_A) == {
        "/arch/a.dcm": FileStamp(10, 1_700_000_000_123_456_789),
        "/arch/x": FileStamp(10, 1_700_000_000_123_456_789),
    }
    assert store.scan_index(["/arch/a.dcm"], "0" * 64) == {}  # another model: screen it again
    store.record_batch([], [], [indexed("/arch/a.dcm", "a", size=11, outcome="duplicate")] * 2)
    with store.engine.connect() as conn:
        rows = conn.execute(select(scanned_files).order_by(scanned_files.c.path)).all()
        result_id = conn.execute(select(results.c.id)).scalar_one()
    assert [(r.path, r.size, r.outcome, r.result_id) for r in rows] == [
        ("/arch/a.dcm", 11, "duplicate", result_id),
        ("/arch/x", 10, "failed", None),
    ]
    with pytest.raises(IntegrityError):  # a bad audit row: the index rows are not kept either
        store.record_batch([], [audit("b", "failed", reason=None)], [indexed("/arch/b", "b")])
    assert store.scan_index(["/arch/b"], MODEL_A) == {}


def test_scan_screens_the_archive_and_changes_nothing_in_it(archive: Archive):
    before = archive.snapshot()
    result = archive.scan()
    assert result.exit_code == 0, result.output
    assert archive.snapshot() == before  # same files, same bytes, same mtimes, nothing added

    audits = archive.rows(audit_events)
    assert len(audits) == 26 and len(archive.rows(results)) == 24
    outcomes = {Path(a.source_path).name: a.outcome for a in audits}
    assert outcomes.pop("broken.jpeg") == outcomes.pop("report.txt") == "failed"
    assert set(outcomes.values()) == {"screened"}
    for a in audits:  # found where it is, not moved anywhere
        assert Path(a.source_path).is_file() and a.source_path.startswith(str(archive.root))
        assert a.destination_path is None and a.worker_id == "scan"
    index = by_path(archive.rows(scanned_files))
    assert len(index) == 26
    broken = archive.root / "2021" / "broken.jpeg"
    assert index[str(broken)].outcome == "failed" and index[str(broken)].size == broken.stat().st_size
    assert index[str(broken)].mtime_ns == broken.stat().st_mtime_ns

    summary = result.stderr
    assert "scan done after" in summary and "26 files read" in summary
    assert "  24 screened, " in summary and "  0 skipped" in summary and "  2 failed" in summary
    assert "    1 not an image: the file is text (expected PNG, JPEG or DICOM)" in summary


def test_a_second_run_skips_everything_and_records_nothing(archive: Archive):
    assert archive.scan().exit_code == 0
    audits, index = archive.rows(audit_events), archive.rows(scanned_files)
    again = archive.scan()
    assert again.exit_code == 0, again.output
    assert "  0 screened, 0 positive" in again.stderr and "  26 skipped" in again.stderr
    assert "  0 failed" in again.stderr  # the bad files are not retried either
    assert archive.rows(audit_events) == audits and archive.rows(scanned_files) == index


def test_a_changed_file_is_screened_again_and_a_touched_one_is_a_duplicate(
    archive: Archive, jpegs: list[Path]
):
    assert archive.scan().exit_code == 0
    changed, touched = sorted((archive.root / "2019").rglob("*.jpeg"))[:2]
    shutil.copyfile(jpegs[35], changed)  # new content under the old name
    os.utime(touched, ns=(time.time_ns(), time.time_ns()))  # same content, new mtime
    result = archive.scan("--output", str(archive.root.parent / "again.jsonl"))
    assert result.exit_code == 0, result.output
    assert "  1 screened" in result.stderr and "  1 duplicates" in result.stderr
    assert "  24 skipped" in result.stderr
    lines = [json.loads(line) for line in (archive.root.parent / "again.jsonl").read_text().splitlines()]
    assert {(Path(v["path"]).name, v["outcome"]) for v in lines} == {
        (changed.name, "screened"),
        (touched.name, "duplicate"),
    }
    assert len(archive.rows(results)) == 25
    index = by_path(archive.rows(scanned_files))
    assert index[str(touched)].mtime_ns == touched.stat().st_mtime_ns
    assert index[str(changed)].content_sha256 == hashlib.sha256(jpegs[35].read_bytes()).hexdigest()


@pytest.fixture
def predictor(loaded_model) -> Predictor:
    return Predictor(loaded_model, InferenceSettings(batch_size=4, decode_workers=2))


def test_the_learner_and_its_predictor_are_the_pipelines_model_and_screening(loaded_model, predictor):
    """The seams (worker/pipeline/ports.py) on the real parts that need torch; the rest:
    tests/unit/test_ports.py."""
    assert isinstance(loaded_model, ports.Model)
    assert isinstance(predictor, ports.Screening)
    assert isinstance(predictor.engine, ports.Engine)  # torch; the ONNX one: tests/unit/test_ports.py


class Counting:
    """The predictor, noting every path handed to the model."""

    def __init__(self, predictor: Predictor):
        self.inner, self.seen = predictor, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, paths):
        def noted():
            for p in paths:
                self.seen.append(p)
                yield p

        return self.inner.predict(noted())


def scanner(root: Path, store: Store, predictor, **kw) -> Scanner:
    return Scanner(files=walk_files([root]), predictor=predictor, store=store, worker_host="test", **kw)


def test_identical_content_is_a_duplicate_without_inference(
    tmp_path: Path, store: Store, predictor: Predictor, jpegs: list[Path]
):
    root = tmp_path / "archive"
    root.mkdir()
    for name in ("a.jpeg", "b.jpeg"):  # twins in one batch
        shutil.copy(jpegs[0], root / name)
    for i, f in enumerate(jpegs[1:9]):  # then enough others that the next copy is batches later
        shutil.copy(f, root / f"c{i}.jpeg")
    (root / "z").mkdir()
    shutil.copy(jpegs[0], root / "z" / "late-copy.jpeg")
    counting = Counting(predictor)
    counts = scanner(root, store, counting).run()
    assert (counts.screened, counts.duplicates) == (9, 2)
    seen = sorted(p.name for p in counting.seen)  # one of the twins: the one listed first
    assert seen[1:] == [f"c{i}.jpeg" for i in range(8)] and seen[0] in ("a.jpeg", "b.jpeg")

    (root / "z" / "next-night.jpeg").write_bytes(jpegs[0].read_bytes())  # screened in an earlier run
    counting = Counting(predictor)
    counts = scanner(root, store, counting).run()
    assert (counts.screened, counts.duplicates, counts.skipped) == (0, 1, 11)
    assert counting.seen == []
    with store.engine.connect() as conn:
        rows = conn.execute(select(audit_events.c.outcome, audit_events.c.result_id)).all()
    assert len(rows) == 12 and len({r.result_id for r in rows}) == 9  # duplicates link the one result
    assert all(r.result_id is not None for r in rows)


def test_a_stopped_scan_commits_what_it_holds_and_the_next_one_finishes(
    tmp_path: Path, store: Store, predictor: Predictor, jpegs: list[Path]
):
    root = tmp_path / "archive"
    root.mkdir()
    for f in jpegs[:20]:
        shutil.copy(f, root / f.name)
    first: Scanner

    def stop_after_the_first_commit(verdicts):
        first.stop()

    first = scanner(root, store, predictor, sinks=[CallbackSink(stop_after_the_first_commit)])
    done = first.run()
    assert first.stopping and 0 < done.screened < 20
    rest = scanner(root, store, predictor).run()
    assert rest.skipped == done.screened and done.screened + rest.screened == 20
    with store.engine.connect() as conn:
        sources = conn.execute(select(audit_events.c.source_path)).scalars().all()
    assert sorted(sources) == sorted(str(root / f.name) for f in jpegs[:20])  # each exactly once


def test_a_database_outage_is_retried_then_reported(
    tmp_path: Path, store: Store, predictor: Predictor, jpegs: list[Path], monkeypatch
):
    root = tmp_path / "archive"
    root.mkdir()
    for f in jpegs[:6]:
        shutil.copy(f, root / f.name)
    real, calls = store.record_batch, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise TransientError("database unavailable: OperationalError: database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "record_batch", flaky)
    quick = RetryPolicy(initial=0.01, maximum=0.01, attempts=8)
    counts = scanner(root, store, predictor, retry=quick).run()
    assert counts.screened == 6 and calls["n"] > 2

    (root / "new.jpeg").write_bytes(jpegs[7].read_bytes())
    monkeypatch.setattr(store, "record_batch", lambda *a, **k: (_ for _ in ()).throw(TransientError("down")))
    with pytest.raises(TransientError):
        scanner(root, store, predictor, retry=RetryPolicy(initial=0.01, maximum=0.01, attempts=3)).run()


def test_the_command_exits_75_when_the_database_stays_down(archive: Archive, monkeypatch):
    def down(*args, **kwargs):
        raise TransientError("database unavailable: OperationalError: connection refused")

    monkeypatch.setattr(Store, "record_batch", down)
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, exc, attempt: 0.0 if attempt < 8 else None)
    result = archive.scan()
    assert result.exit_code == 75, result.output
    assert "scan stopped, database unavailable (database unavailable: " in result.stderr


def test_include_exclude_since_and_limit(archive: Archive):
    result = archive.scan("--include", "*.JPEG", "--exclude", "2020", "--limit", "5")
    assert result.exit_code == 0, result.output
    assert "stopped at --limit 5" in result.stderr and "  5 screened" in result.stderr
    result = archive.scan("--include", "*.jpeg", "--exclude", "2020")
    audits = archive.rows(audit_events)
    paths = [Path(a.source_path) for a in audits]
    assert all(p.suffix == ".jpeg" and "2020" not in p.parts for p in paths)
    assert len(paths) == len(set(paths)) == 8 + 8 + 1  # 2019, 2021 and broken.jpeg, each once
    assert "  5 skipped" in result.stderr

    old = archive.root / "2020" / "old"
    old.mkdir()
    shutil.copy2(paths[0], old / "old.jpeg")
    os.utime(old / "old.jpeg", (0, datetime(2001, 1, 1, tzinfo=UTC).timestamp()))
    result = archive.scan("--since", (datetime.now(UTC) - timedelta(days=1)).date().isoformat())
    assert result.exit_code == 0
    assert str(old / "old.jpeg") not in {a.source_path for a in archive.rows(audit_events)}
    assert "report.txt" in {Path(a.source_path).name for a in archive.rows(audit_events)}


def test_walk_filters_on_a_made_up_tree(tmp_path: Path):
    for rel in [
        "a/x.DCM",
        "a/y.png",
        "a/.hidden.dcm",
        "a/thumbs/t.png",
        "b/c/z.dcm",
        "b/c/z.dcm.part",
        ".git/h",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    (tmp_path / "b" / "link.dcm").symlink_to(tmp_path / "a" / "x.DCM")

    def walk(*roots: Path, **filters) -> list[str]:
        found = walk_files(roots or [tmp_path], FileFilter(**filters))
        return sorted(str(f.path.relative_to(tmp_path)) for f in found)

    assert walk() == ["a/thumbs/t.png", "a/x.DCM", "a/y.png", "b/c/z.dcm", "b/c/z.dcm.part"]
    assert walk(include=("*.dcm",)) == ["a/x.DCM", "b/c/z.dcm"]
    assert walk(exclude=("thumbs", "*.part")) == ["a/x.DCM", "a/y.png", "b/c/z.dcm"]
    assert walk(include=("b/*",)) == ["b/c/z.dcm", "b/c/z.dcm.part"]
    assert walk(tmp_path / "a", tmp_path, tmp_path / "b") == walk()  # nested roots: each file once
    future = datetime.now(UTC) + timedelta(hours=1)
    assert walk(since=future) == []
    found = next(iter(walk_files([tmp_path / "a" / "y.png"])))
    assert (found.size, found.mtime_ns) == (len("a/y.png"), (tmp_path / "a" / "y.png").stat().st_mtime_ns)


def test_output_csv_has_a_row_per_file_read(archive: Archive):
    out = archive.root.parent / "night.csv"
    result = archive.scan("--output", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 26
    assert list(rows[0]) == [
        "path",
        "outcome",
        "label",
        "positive_probability",
        "probability_NORMAL",
        "probability_PNEUMONIA",
        "reason",
        "content_sha256",
        "path_hex",
    ]
    labels = {r.content_sha256: r.label for r in archive.rows(results)}
    for row in rows:
        if row["outcome"] == "failed":
            assert row["reason"] and row["label"] == "" and row["probability_NORMAL"] == ""
            continue
        assert row["label"] == labels[row["content_sha256"]]
        assert float(row["probability_NORMAL"]) + float(row["probability_PNEUMONIA"]) == pytest.approx(
            1, 1e-5
        )
        assert float(row["positive_probability"]) == pytest.approx(float(row["probability_PNEUMONIA"]))
    assert archive.scan("--output", str(out)).exit_code == 0
    assert len(out.read_text().splitlines()) == 1  # this run read nothing: only the header


def test_bad_command_lines_say_what_to_fix(archive: Archive, tmp_path: Path):
    result = archive.scan("--output", str(archive.root / "2019" / "out.csv"))
    assert result.exit_code == 2 and "inside the archive folder" in result.output
    result = archive.scan("--output", str(tmp_path / "out.xlsx"))
    assert result.exit_code == 2 and "must end in .csv or .jsonl" in result.output
    result = archive.scan(roots=[tmp_path / "not-mounted"])
    assert result.exit_code == 78 and "does not exist" in result.output
    assert archive.snapshot() == archive.snapshot() and not (archive.root / "2019" / "out.csv").exists()


def test_roots_come_from_the_settings(archive: Archive, tmp_path: Path):
    config = tmp_path / "config.toml"
    config.write_text(f'[scan]\nroots = ["{archive.root.name}/2019"]\ninclude = ["*.jpeg"]\n')
    result = CliRunner().invoke(
        cli,
        [
            "--config",
            str(config),
            "scan",
            "--db",
            archive.db_url,
            "--model",
            str(archive.model),
            "--trust-model",
        ],
    )
    assert result.exit_code == 0, result.output
    assert {Path(a.source_path).parts[-3] for a in archive.rows(audit_events)} == {"2019"}
    config.write_text("[scan]\nroots = []\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "scan", "--db", archive.db_url])
    assert result.exit_code == 78 and "no folders to scan" in result.output


def test_progress_is_a_live_line_in_a_terminal_and_periodic_lines_in_a_log():
    now = [0.0]
    counts = Counts(screened=40, skipped=100)
    tty, log = io.StringIO(), io.StringIO()
    live = Progress(tty, tty=True, limit=100, clock=lambda: now[0])
    periodic = Progress(log, tty=False, interval=30, clock=lambda: now[0])
    for t in (1.0, 10.0, 20.0, 31.0, 40.0):
        now[0] = t
        live.update(counts)
        periodic.update(counts)
    assert tty.getvalue().count("\r") == 5
    last = tty.getvalue().split("\r")[-1]
    assert (
        last == "140 files: 40 screened, 0 duplicates, 100 skipped, 0 failed | 1.0 images/s | ETA 1m00s\x1b[K"
    )
    assert log.getvalue().splitlines() == [
        "scan: 140 files: 40 screened, 0 duplicates, 100 skipped, 0 failed | 1.3 images/s"
    ]
    live.finish()
    assert tty.getvalue().endswith("\r\x1b[K")
