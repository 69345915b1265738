"""The fault boundary around each file (worker/runtime/boundary.py): an exception nobody foresaw, at any
stage, for one file among many, fails that file with ``internal error: <type>: <message>``,
gives it an audit row and a place in failed/, logs its traceback once, and the daemon or the
scan goes on with the others.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile_files import encode, grey
from sqlalchemy import select
from test_daemon import Site, make_site

import worker.model.stages as stages_module
import worker.pipeline.item as item_module
import worker.sinks.filer as filer_module
import worker.sources.claim as claim_module
from worker.config import InferenceSettings
from worker.daemon import READ_ATTEMPTS
from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.schema import audit_events, results, scanned_files
from worker.db.store import Store
from worker.model.predictor import Predictor
from worker.scan.local import Scanner
from worker.sinks.results_file import ResultsFile
from worker.sources.walk import walk_files

VICTIM = "victim.jpeg"
FILES = [f"film-{n}.jpeg" for n in range(7)] + [VICTIM]
INJECTED = "injected fault"


def jpeg(n: int) -> bytes:
    return encode(grey((96 + n, 80)), "JPEG")


def boom(*_args, **_kwargs):
    raise RuntimeError(INJECTED)


def for_victim(real: Callable, pick: Callable[..., bool]) -> Callable:
    """``real``, except that it raises for the calls ``pick`` says are the victim's."""

    def call(*args, **kwargs):
        if pick(*args, **kwargs):
            raise RuntimeError(INJECTED)
        return real(*args, **kwargs)

    return call


def named(arg, *_rest, **_kw) -> bool:
    return VICTIM in str(arg)


@pytest.fixture
def site(tmp_path: Path, loaded_model) -> Site:
    return make_site(tmp_path, loaded_model)


def inject(stage: str, site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``stage`` raise for the victim alone."""
    if stage == "claim":  # fitting the claimed name
        monkeypatch.setattr(claim_module, "fit", for_victim(claim_module.fit, named))
    elif stage == "hash":
        monkeypatch.setattr(item_module, "sha256_file", for_victim(item_module.sha256_file, named))
    elif stage == "decode":
        monkeypatch.setattr(stages_module, "decode_file", for_victim(stages_module.decode_file, named))
    elif stage == "record":  # the database refuses the victim's result row (not an outage)
        victim_sha = None

        def record_batch(results_, audits, *rest, **kw):
            nonlocal victim_sha
            for a in audits:
                if named(a.source_path) and a.outcome == "screened":
                    victim_sha = a.content_sha256
            if any(r.content_sha256 == victim_sha for r in results_):
                raise RuntimeError(INJECTED)
            return real_record(results_, audits, *rest, **kw)

        real_record = site.store.record_batch
        monkeypatch.setattr(site.store, "record_batch", record_batch)
    elif stage == "move":  # the move into processed/
        monkeypatch.setattr(
            filer_module,
            "move_no_clobber",
            for_victim(
                filer_module.move_no_clobber,
                lambda src, folder, *a, **k: named(src) and "processed" in str(folder),
            ),
        )
    elif stage == "sidecar":  # the victim is unreadable content; writing its .error.json fails
        (site.inbox / VICTIM).write_bytes(b"not an image\n")
        monkeypatch.setattr(
            filer_module, "write_error_sidecar", for_victim(filer_module.write_error_sidecar, named)
        )
    else:
        raise AssertionError(stage)


@pytest.mark.parametrize("stage", ["claim", "hash", "decode", "record", "move", "sidecar"])
def test_an_exception_at_any_stage_fails_that_file_alone(stage: str, site: Site, monkeypatch, caplog):
    for n, name in enumerate(FILES):
        (site.inbox / name).write_bytes(jpeg(n))
    inject(stage, site, monkeypatch)
    caplog.set_level(logging.INFO)
    daemon = site.daemon()
    site.drain(daemon, rounds=8)  # an exception escaping step() fails the test

    audits = {Path(a.source_path).name: a for a in site.rows(audit_events)}
    assert sorted(audits) == sorted(FILES)  # every file has exactly one audit row
    victim = audits.pop(VICTIM)
    assert victim.outcome == "failed", (stage, victim.outcome)
    assert victim.reason == f"internal error: RuntimeError: {INJECTED}", (stage, victim.reason)
    moved = Path(victim.destination_path)
    assert moved.is_relative_to(site.folders.failed) and moved.name == VICTIM and moved.exists()
    assert {a.outcome for a in audits.values()} == {"screened"}, stage  # the others go on
    for audit in audits.values():
        assert Path(audit.destination_path).is_relative_to(site.folders.processed)
        assert Path(audit.destination_path).exists()
    # nothing left in the inbox or claimed, nothing filed twice
    assert sorted(p.name for p in site.inbox.iterdir()) == [".xray-screen"]
    assert sorted(p.name for p in (site.inbox / ".xray-screen" / "w1").iterdir()) == [".alive", ".lock"]
    filed = [p.name for p in site.root.joinpath("processed").rglob("*") if p.is_file()]
    filed += [p.name for p in site.folders.failed.rglob("*") if p.is_file() and not p.name.endswith(".json")]
    assert sorted(filed) == sorted(FILES)
    # the traceback is logged once, for that file (once per attempt where the failure is one
    # that is tried again: hashing, like reading, is retried READ_ATTEMPTS times)
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    expected = READ_ATTEMPTS if stage == "hash" else 1
    assert len(tracebacks) == expected, [r.getMessage() for r in tracebacks]
    assert all(VICTIM in r.getMessage() for r in tracebacks)
    if stage != "sidecar":
        sidecar = json.loads(moved.with_name(VICTIM + ".error.json").read_text())
        assert sidecar["reason"] == victim.reason
    # the daemon is still up: a film dropped afterwards is screened
    (site.inbox / "later.jpeg").write_bytes(jpeg(50))
    site.drain(site.daemon(), rounds=3)
    assert [a.outcome for a in site.rows(audit_events) if a.source_path.endswith("later.jpeg")] == [
        "screened"
    ]


# -- the scan ------------------------------------------------------------------------


@pytest.fixture
def archive(tmp_path: Path, loaded_model):
    root = tmp_path / "archive"
    root.mkdir()
    for n, name in enumerate(FILES):
        (root / name).write_bytes(jpeg(n))
    url = f"sqlite:///{tmp_path / 'scan.db'}"
    migrate.upgrade(make_engine(url, create=True))
    return root, Store(url), Predictor(loaded_model, InferenceSettings(batch_size=4))


def scan_stage(stage: str, store: Store, predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    if stage == "hash":
        monkeypatch.setattr(item_module, "sha256_file", for_victim(item_module.sha256_file, named))
    elif stage == "decode":
        monkeypatch.setattr(stages_module, "decode_file", for_victim(stages_module.decode_file, named))
    elif stage == "record":
        real = store.record_batch

        def record_batch(results_, audits, *rest, **kw):
            if any(named(a.source_path) and a.outcome == "screened" for a in audits):
                raise RuntimeError(INJECTED)
            return real(results_, audits, *rest, **kw)

        monkeypatch.setattr(store, "record_batch", record_batch)
    else:
        raise AssertionError(stage)


@pytest.mark.parametrize("stage", ["hash", "decode", "record"])
def test_a_scan_fails_that_file_alone_and_tries_it_again_next_run(stage: str, archive, monkeypatch, caplog):
    root, store, predictor = archive
    scan_stage(stage, store, predictor, monkeypatch)
    caplog.set_level(logging.INFO)
    Scanner(files=walk_files([root]), predictor=predictor, store=store, worker_host="test").run()
    with store.engine.connect() as conn:
        audits = {Path(a.source_path).name: a for a in conn.execute(select(audit_events))}
        indexed = {Path(r.path).name for r in conn.execute(select(scanned_files))}
    assert sorted(audits) == sorted(FILES)
    victim = audits.pop(VICTIM)
    assert (victim.outcome, victim.reason) == ("failed", f"internal error: RuntimeError: {INJECTED}")
    assert {a.outcome for a in audits.values()} == {"screened"}
    assert [r for r in caplog.records if r.exc_info is not None and VICTIM in r.getMessage()]
    if stage == "decode":
        assert VICTIM in indexed  # the decoder's verdict on the content: not read again
    else:
        assert VICTIM not in indexed  # our fault, not the file's: the next run tries it again
        monkeypatch.undo()
        Scanner(files=walk_files([root]), predictor=predictor, store=store, worker_host="test").run()
        with store.engine.connect() as conn:
            again = [a for a in conn.execute(select(audit_events)) if a.source_path.endswith(VICTIM)]
            assert sorted(a.outcome for a in again) == ["failed", "screened"]
            assert conn.execute(select(results)).all()


def test_an_output_line_that_cannot_be_written_is_logged_and_the_others_are_written(
    archive, tmp_path: Path, monkeypatch, caplog
):
    root, store, predictor = archive
    out = ResultsFile(tmp_path / "night.jsonl", predictor.model.vocab)
    real_write = out.committed

    def write(verdicts):
        if any(named(v.path) for v in verdicts):
            boom()
        real_write(verdicts)

    monkeypatch.setattr(out, "committed", write)
    Scanner(files=walk_files([root]), predictor=predictor, store=store, worker_host="test", sinks=[out]).run()
    out.close()
    lines = [json.loads(line) for line in (tmp_path / "night.jsonl").read_text().splitlines()]
    assert sorted(Path(line["path"]).name for line in lines) == sorted(set(FILES) - {VICTIM})
    assert [r for r in caplog.records if r.exc_info is not None and VICTIM in r.getMessage()]


def test_a_claim_that_fails_even_bare_leaves_the_file_in_the_inbox_and_the_daemon_up(
    site: Site, monkeypatch, caplog
):
    for n, name in enumerate(FILES):
        (site.inbox / name).write_bytes(jpeg(n))
    real_claim = claim_module.WorkArea.claim

    def claim(self, path, *, bare=False):
        if named(path):
            raise RuntimeError(INJECTED)
        return real_claim(self, path, bare=bare)

    monkeypatch.setattr(claim_module.WorkArea, "claim", claim)
    daemon = site.daemon()
    site.drain(daemon, rounds=6)
    assert (site.inbox / VICTIM).exists()  # left alone, logged, not retried every step
    outcomes = {Path(a.source_path).name: a.outcome for a in site.rows(audit_events)}
    assert outcomes == dict.fromkeys(set(FILES) - {VICTIM}, "screened")
    assert sum("cannot claim" in r.getMessage() for r in caplog.records) == 1
    shutil.rmtree(site.inbox / ".xray-screen")
