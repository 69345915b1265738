"""The shared pipeline (worker/pipeline) and its two front ends, the inbox daemon and the
archive scan, on in-memory fakes: no model, no database, no shared data.

The point of one pipeline is that each behaviour is decided once; these tests hold the two
front ends to that, e.g. a file that cannot be read just now is tried again by both, and
content screened once is never given to the model again by either.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from fakes import CallbackSink, FakePredictor, MemoryStore, film

from worker.answers import Failure, Prediction, Refusal
from worker.daemon import READ_ATTEMPTS, Daemon
from worker.decode import DecodedImage
from worker.errors import ReadError, TransientError
from worker.outcome import Outcome
from worker.pipeline.commit import Committer
from worker.pipeline.item import Item
from worker.pipeline.settle import Settler
from worker.runtime.retry import RetryPolicy
from worker.scan.local import Scanner
from worker.sinks.filer import Folders
from worker.sources.claim import WorkArea
from worker.sources.inbox import Inbox
from worker.sources.walk import FileFilter, walk_files

QUICK = RetryPolicy(initial=0.001, maximum=0.001, attempts=3)


def item(tmp_path: Path, name: str, content: bytes) -> Item:
    path = tmp_path / name
    path.write_bytes(content)
    return Item(path=path, name=str(path)).hash()


# -- settling ---------------------------------------------------------------------------


def test_each_content_goes_through_the_model_once_and_its_twins_wait_for_it(tmp_path):
    settler = Settler()
    a, twin, b = (
        item(tmp_path, "a", film("PNEUMONIA", 0.9)),
        item(tmp_path, "a2", film("PNEUMONIA", 0.9)),
        None,
    )
    b = item(tmp_path, "b", film("NORMAL", 0.1))
    to_screen, decided = settler.settle([a, twin, b], known={})
    assert to_screen == [a, b] and decided == []  # the twin waits for a's verdict
    answers = dict(zip(("a", "b"), FakePredictor().predict([a.path, b.path]), strict=True))
    assert settler.decide(a, answers["a"], "PNEUMONIA") == [a, twin]
    assert twin.outcome is Outcome.DUPLICATE and twin.label == "PNEUMONIA" and twin.positive
    assert twin.probabilities == a.probabilities
    # met again later in the run, before a is committed: a's verdict, no model
    again = item(tmp_path, "a3", film("PNEUMONIA", 0.9))
    assert settler.settle([again], known={}) == ([], [again]) and again.outcome is Outcome.DUPLICATE
    # after the commit the settler forgets it: the database answers from then on
    settler.forget([a, twin])
    assert settler.unknown([item(tmp_path, "a4", film("PNEUMONIA", 0.9))]) == {a.sha256}


def test_a_failed_first_fails_its_twins_with_the_same_reason_and_retry(tmp_path):
    settler = Settler()
    a, twin = item(tmp_path, "a", b"EIO\n"), item(tmp_path, "b", b"EIO\n")
    assert settler.settle([a, twin], known={}) == ([a], [])
    [answer] = FakePredictor().predict([a.path])
    settler.decide(a, answer, "PNEUMONIA")
    assert twin.outcome is Outcome.FAILED and twin.reason == a.reason and twin.retry and a.retry


def test_an_unreadable_file_fails_as_worth_another_try(tmp_path):
    gone = Item(path=tmp_path / "gone.png", name="gone.png").hash()
    assert gone.outcome is Outcome.FAILED and gone.retry and gone.reason.startswith("cannot read file")
    [answer] = FakePredictor().predict([item(tmp_path, "text", b"hello\n").path])
    text = item(tmp_path, "t", b"hello\n")
    text.decide(answer, "PNEUMONIA")
    assert text.outcome is Outcome.FAILED and not text.retry  # its content: final


def test_each_kind_of_answer_decides_an_item_by_its_type(tmp_path):
    decoded = DecodedImage(np.zeros((1, 1), np.uint8), "png", 1, 1, None)
    path = tmp_path / "f.png"
    probabilities = {"NORMAL": 0.1, "PNEUMONIA": 0.9}
    answers = {
        Outcome.SCREENED: Prediction(path, "PNEUMONIA", probabilities, 0.9, decoded, decode_ms=1, infer_ms=2),
        Outcome.OUT_OF_SCOPE: Refusal(path, "Modality MR is not screened", decoded),
        Outcome.FAILED: Failure(path, ReadError("cannot read file: Input/output error")),
    }
    for outcome, answer in answers.items():
        decided = Item(path=path, name="f.png")
        decided.decide(answer, "PNEUMONIA")
        assert decided.outcome is outcome and decided.finished_at is not None
    screened = Item(path=path, name="f.png")
    screened.decide(answers[Outcome.SCREENED], "PNEUMONIA")
    assert screened.positive and screened.prediction is answers[Outcome.SCREENED]
    failed = Item(path=path, name="f.png")
    failed.decide(answers[Outcome.FAILED], "PNEUMONIA")
    assert failed.retry and failed.reason == "cannot read file: Input/output error"  # a ReadError: transient
    with pytest.raises(TypeError, match="not an answer"):
        Item(path=path, name="f.png").decide(object(), "PNEUMONIA")  # type: ignore[arg-type]


# -- committing -------------------------------------------------------------------------


def committer(store: MemoryStore, **kw) -> Committer:
    return Committer(store=store, screening=FakePredictor(), worker_host="t", worker_id="w", **kw)


def decided(tmp_path: Path, *contents: bytes) -> list[Item]:
    items = [item(tmp_path, f"f{n}", c) for n, c in enumerate(contents)]
    settler = Settler()
    to_screen, done = settler.settle(items, {})
    for i, answer in zip(to_screen, FakePredictor().predict([i.path for i in to_screen]), strict=True):
        done += settler.decide(i, answer, "PNEUMONIA")
    return items


def test_a_batch_is_committed_in_one_transaction_with_one_audit_row_per_file(tmp_path):
    store = MemoryStore()
    items = decided(tmp_path, film("PNEUMONIA", 0.8), film("PNEUMONIA", 0.8), b"junk\n")
    recorded = committer(store).commit(items)
    assert recorded == items and store.commits == 1
    assert len(store.results) == 1 and len(store.audits) == 3
    assert sorted(a.outcome for a in store.audits.values()) == ["duplicate", "failed", "screened"]


def test_a_row_the_database_refuses_fails_that_file_alone(tmp_path):
    store = MemoryStore()
    items = decided(tmp_path, film("PNEUMONIA", 0.8), film("NORMAL", 0.2, "x"))
    store.refused.add(items[0].sha256)
    c = committer(store)
    recorded = c.commit(items)
    assert recorded == items
    assert items[0].outcome is Outcome.FAILED and items[0].reason.startswith("internal error: ValueError")
    assert items[0].retry and items[1].outcome is Outcome.SCREENED
    assert len(store.results) == 1 and len(store.audits) == 2
    assert c.counts.screened == 1 and c.counts.failed.total() == 1


def test_an_outage_is_retried_by_the_policy_then_reaches_the_loop(tmp_path):
    store = MemoryStore()
    items = decided(tmp_path, film("NORMAL", 0.3))
    store.down = True
    with pytest.raises(TransientError):
        committer(store, retry=QUICK).commit(items)
    assert store.audits == {}  # nothing of the batch
    threading.Timer(0.05, lambda: setattr(store, "down", False)).start()
    slow = RetryPolicy(initial=0.02, maximum=0.02, attempts=50)
    assert committer(store, retry=slow).commit(items) == items and len(store.audits) == 1


# -- the daemon (inbox source, filing sink) -------------------------------------------------


class Site:
    def __init__(self, root: Path):
        self.root = root
        self.inbox = root / "inbox"
        self.inbox.mkdir()
        self.folders = Folders(root / "processed", root / "failed")
        self.store = MemoryStore()
        self.predictor = FakePredictor()

    def daemon(self) -> Daemon:
        return Daemon(
            inbox=Inbox(self.inbox, stability_seconds=0, rescan_interval=0),
            work=WorkArea(self.inbox, "w1"),
            predictor=self.predictor,
            store=self.store,
            folders=self.folders,
            batch_size=4,
            max_wait=0,
            worker_host="t",
        )

    def files(self, folder: str) -> list[str]:
        base = self.root / folder
        return sorted(
            str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and p.suffix != ".json"
        )


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def test_the_daemon_files_each_file_by_its_outcome(site: Site):
    (site.inbox / "a.png").write_bytes(film("PNEUMONIA", 0.9))
    (site.inbox / "b.png").write_bytes(film("NORMAL", 0.1))
    (site.inbox / "twin.png").write_bytes(film("PNEUMONIA", 0.9))
    (site.inbox / "notes.txt").write_bytes(b"hello\n")
    daemon = site.daemon()
    daemon.recover()
    for _ in range(3):
        daemon.step()
    assert [f.split("/")[0] + "/" + f.split("/")[-1] for f in site.files("processed")] == [
        "NORMAL/b.png",
        "PNEUMONIA/a.png",
        "PNEUMONIA/twin.png",
    ]
    assert [f.split("/")[-1] for f in site.files("failed")] == ["notes.txt"]
    sidecar = next((site.root / "failed").rglob("*.error.json"))
    assert json.loads(sidecar.read_text())["reason"] == "not an image: the file is text"
    outcomes = site.store.outcomes()
    assert sorted([outcomes.pop("a.png"), outcomes.pop("twin.png")]) == ["duplicate", "screened"]
    assert outcomes == {"b.png": "screened", "notes.txt": "failed"}
    assert len(site.predictor.seen) == 3  # the twin never reached the model
    assert daemon.counts.screened == 2 and daemon.counts.duplicates == 1 and daemon.counts.positives == 2
    for audit in site.store.audits.values():
        assert Path(audit.destination_path).exists()


def test_the_daemon_tries_a_file_that_cannot_be_read_just_now_again(site: Site):
    """A transient read error is not a verdict on the file: it stays claimed and is read again,
    as the scan reads it again at its next run; only a file unreadable READ_ATTEMPTS times in a
    row goes to failed/."""
    flaky = site.inbox / "flaky.png"
    flaky.write_bytes(b"EIO\n")
    (site.inbox / "dead.png").write_bytes(b"EIO\ndead")
    daemon = site.daemon()
    daemon.recover()
    daemon.step()
    assert site.store.audits == {} and site.files("failed") == []  # nothing judged yet
    claimed = next(p for p in daemon.work.root.iterdir() if p.name.endswith("flaky.png"))
    claimed.write_bytes(film("NORMAL", 0.2))  # the share recovered
    for _ in range(READ_ATTEMPTS + 1):
        daemon.step()
    assert [f.split("/")[-1] for f in site.files("processed")] == ["flaky.png"]
    assert [f.split("/")[-1] for f in site.files("failed")] == ["dead.png"]
    assert site.store.outcomes() == {"flaky.png": "screened", "dead.png": "failed"}
    assert len(site.store.audits) == 2  # one row per file, however many attempts


def test_a_database_outage_leaves_the_batch_claimed_until_it_is_back(site: Site):
    (site.inbox / "a.png").write_bytes(film("PNEUMONIA", 0.9))
    daemon = site.daemon()
    daemon.recover()
    site.store.down = True
    with pytest.raises(TransientError):
        daemon.step()
    assert site.files("processed") == [] and len(list(daemon.work.pending())) == 1
    site.store.down = False
    daemon.step()
    assert [f.split("/")[-1] for f in site.files("processed")] == ["a.png"]


# -- the scan (archive source, --output sink) -----------------------------------------------


def scan(root: Path, store: MemoryStore, predictor: FakePredictor, **kw) -> Scanner:
    return Scanner(
        files=walk_files([root], FileFilter((), (), None)),
        predictor=predictor,
        store=store,
        worker_host="t",
        retry=QUICK,
        **kw,
    )


def test_the_scan_skips_what_it_indexed_and_reads_a_transient_failure_again_next_run(tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    (root / "a.png").write_bytes(film("PNEUMONIA", 0.7))
    (root / "copy.png").write_bytes(film("PNEUMONIA", 0.7))
    (root / "flaky.png").write_bytes(b"EIO\n")
    (root / "notes.txt").write_bytes(b"hello\n")
    store, predictor = MemoryStore(), FakePredictor()
    written: list[Item] = []
    counts = scan(root, store, predictor, sinks=[CallbackSink(written.extend)]).run()
    assert (counts.screened, counts.duplicates, counts.failed.total()) == (1, 1, 2)
    assert sorted(Path(i.name).name for i in written) == ["a.png", "copy.png", "flaky.png", "notes.txt"]
    indexed = sorted(Path(p).name for p, _ in store.scanned)
    assert indexed == ["a.png", "copy.png", "notes.txt"]  # flaky.png is read again next run

    (root / "flaky.png").write_bytes(film("NORMAL", 0.2))
    predictor.seen.clear()
    counts = scan(root, store, predictor).run()
    assert counts.skipped == 3 and counts.screened == 1 and [p.name for p in predictor.seen] == ["flaky.png"]


def test_content_screened_by_the_daemon_is_a_duplicate_for_the_scan(site: Site, tmp_path):
    (site.inbox / "a.png").write_bytes(film("PNEUMONIA", 0.95))
    daemon = site.daemon()
    daemon.recover()
    daemon.step()
    root = tmp_path / "archive"
    root.mkdir()
    (root / "same.png").write_bytes(film("PNEUMONIA", 0.95))
    site.predictor.seen.clear()
    counts = scan(root, site.store, site.predictor).run()
    assert counts.duplicates == 1 and counts.positives == 1 and site.predictor.seen == []


# -- the gate's outcome through both front ends ----------------------------------------------


def test_a_file_the_gate_refuses_is_out_of_scope_neither_a_verdict_nor_a_failure(site: Site, tmp_path):
    (site.inbox / "knee.dcm").write_bytes(b"MR\n")
    (site.inbox / "knee-copy.dcm").write_bytes(b"MR\n")
    (site.inbox / "chest.png").write_bytes(film("NORMAL", 0.1))
    daemon = site.daemon()
    daemon.recover()
    daemon.step()
    assert sorted(f.split("/")[0] + "/" + f.split("/")[-1] for f in site.files("processed")) == [
        "NORMAL/chest.png",
        "OUT_OF_SCOPE/knee-copy.dcm",
        "OUT_OF_SCOPE/knee.dcm",
    ]
    assert site.files("failed") == []
    refused = [a for a in site.store.audits.values() if a.outcome == "out_of_scope"]
    assert len(refused) == 2 and {a.reason for a in refused} == {"Modality MR is not screened"}
    assert len(site.store.results) == 1  # no result row: the model gave no verdict
    assert daemon.counts.out_of_scope.total() == 2 and daemon.counts.failed.total() == 0
    assert "2 out of scope" in daemon.status()

    root = tmp_path / "archive"
    root.mkdir()
    (root / "knee.dcm").write_bytes(b"MR\nother bytes")
    written: list[Item] = []
    counts = scan(root, site.store, site.predictor, sinks=[CallbackSink(written.extend)]).run()
    assert counts.out_of_scope == {"Modality MR is not screened": 1} and counts.failed.total() == 0
    assert [i.outcome for i in written] == [Outcome.OUT_OF_SCOPE]
    assert [s.outcome for s in site.store.scanned.values()] == ["out_of_scope"]  # not read again
