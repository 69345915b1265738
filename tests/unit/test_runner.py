"""The runner (worker/pipeline/runner.py) on its own, with a source and sinks made here: the
order of what happens after a commit, the fault boundary around sinks, chunks that arrive
while earlier ones are still screened, and a run after a failed one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from fakes import FakePredictor, MemoryStore, film

from worker.errors import TransientError
from worker.outcome import Outcome
from worker.pipeline.commit import Committer
from worker.pipeline.item import Item
from worker.pipeline.observe import Committed, FaultPoint, Observer, Observers
from worker.pipeline.ports import Sink, Source
from worker.pipeline.runner import Runner
from worker.runtime.faults import Faults


class Events:
    def __init__(self) -> None:
        self.seen: list[str] = []


class Recording(Source):
    """Admits every item but the ones named ``held*``; notes what it is told."""

    def __init__(self, events: Events):
        self.events = events
        self.finished_items: list[Item] = []

    def admit(self, decided: list[Item]) -> list[Item]:
        self.events.seen.append(f"admit {len(decided)}")
        return [i for i in decided if not Path(i.name).name.startswith("held")]

    def finished(self, recorded: Sequence[Item]) -> None:
        self.events.seen.append(f"finished {len(recorded)}")
        self.finished_items += recorded


class Noting(Observer):
    def __init__(self, events: Events, name: str):
        self.events, self.name = events, name

    def committed(self, batch: Committed) -> None:
        self.events.seen.append(f"{self.name} {len(batch.items)}")


class Broken(Observer):
    def committed(self, batch: Committed) -> None:
        raise RuntimeError("a metric failed")


class NotingSink(Sink):
    def __init__(self, events: Events, fail_on: str = ""):
        self.events, self.fail_on = events, fail_on
        self.items: list[Item] = []

    def committed(self, items: Sequence[Item]) -> None:
        if any(self.fail_on and self.fail_on in i.name for i in items):
            raise OSError("disk full")
        self.events.seen.append(f"sink {len(items)}")
        self.items += items


def files(tmp_path: Path, *names: str, p: float = 0.9) -> list[Item]:
    out = []
    for n, name in enumerate(names):
        path = tmp_path / name
        path.write_bytes(film("PNEUMONIA", p, marker=f"{name} {n}"))
        out.append(Item(path=path, name=str(path)))
    return out


def runner(store: MemoryStore, source: Source, **kw) -> Runner:
    predictor = FakePredictor(batch_size=2)
    committer = Committer(store=store, screening=predictor, worker_host="t", worker_id="w")
    return Runner(screening=predictor, committer=committer, source=source, **{"commit_size": 2, **kw})


def test_after_each_commit_the_middleware_then_the_sinks_then_the_source(tmp_path):
    events = Events()
    source = Recording(events)
    sink = NotingSink(events)
    middleware = [Noting(events, "first"), Observers([Broken(), Noting(events, "second")])]
    run = runner(MemoryStore(), source, sinks=[sink], middleware=middleware)
    run.run([files(tmp_path, "a", "b", "c")])
    run.close()
    assert events.seen == [
        "admit 2",
        "first 2",
        "second 2",  # the broken observer before it was contained by Observers
        "sink 2",
        "finished 2",
        "admit 1",
        "first 1",
        "second 1",
        "sink 1",
        "finished 1",
    ]
    assert [Path(i.name).name for i in source.finished_items] == ["a", "b", "c"]
    assert run.counts.screened == 3


def test_a_sink_that_fails_on_one_item_still_gets_the_others_and_screening_goes_on(tmp_path, caplog):
    events = Events()
    source = Recording(events)
    sink = NotingSink(events, fail_on="bad")
    run = runner(MemoryStore(), source, sinks=[sink], commit_size=4)
    run.run([files(tmp_path, "a", "bad", "c", "d")])
    run.close()
    assert [Path(i.name).name for i in sink.items] == ["a", "c", "d"]  # one at a time after the batch failed
    assert len(source.finished_items) == 4  # committed and finished all the same
    assert any("bad" in r.getMessage() and r.exc_info for r in caplog.records)


def test_items_the_source_keeps_back_are_not_committed(tmp_path):
    events = Events()
    source = Recording(events)
    store = MemoryStore()
    run = runner(store, source, commit_size=8)
    run.run([files(tmp_path, "a", "held-b")])
    run.close()
    assert [Path(i.name).name for i in source.finished_items] == ["a"]
    assert run.counts.screened == 1


def test_chunks_are_settled_against_what_earlier_chunks_screened(tmp_path):
    """The second chunk's copy of a content of the first waits for, or copies, its verdict:
    the model sees each content once, whichever chunk brings it."""
    first = files(tmp_path, "a", "b")
    copy = tmp_path / "a-copy"
    copy.write_bytes(first[0].path.read_bytes())
    source = Recording(Events())
    run = runner(MemoryStore(), source, commit_size=1, read_ahead=True)
    seen: list[Path] = []
    inner = run.screening.predict

    def predict(paths):
        for answer in inner(paths):
            seen.append(answer.path)
            yield answer

    run.screening.predict = predict  # type: ignore[method-assign]
    run.run([first, [Item(path=copy, name=str(copy))]])
    run.close()
    assert [p.name for p in seen] == ["a", "b"]
    outcomes = {Path(i.name).name: i.outcome for i in source.finished_items}
    assert outcomes == {"a": Outcome.SCREENED, "b": Outcome.SCREENED, "a-copy": Outcome.DUPLICATE}


def test_an_outage_reaches_the_source_and_the_next_run_starts_clean(tmp_path):
    """A run whose commit fails leaves nothing in flight: the same items, taken again (as the
    daemon does after an outage), go through the model and are committed once."""
    store = MemoryStore()
    source = Recording(Events())
    run = runner(store, source, commit_size=8)
    items = files(tmp_path, "a", "b")
    real = store.record_batch

    def down(*args, **kw):
        raise TransientError("the database is unavailable")

    store.record_batch = down  # type: ignore[method-assign]
    with pytest.raises(TransientError):
        run.run([items])
    store.record_batch = real  # type: ignore[method-assign]
    again = [Item(path=i.path, name=i.name) for i in items]
    run.run([again])
    run.close()
    assert [i.outcome for i in source.finished_items] == [Outcome.SCREENED, Outcome.SCREENED]
    assert run.counts.screened == 2


def test_the_chaos_crash_point_is_not_behind_the_fault_boundary(tmp_path):
    """FaultPoint kills at after-commit; an Observers around it would swallow the crash."""

    class Killed(BaseException):
        pass

    def kill() -> None:
        raise Killed

    source = Recording(Events())
    crash = FaultPoint(Faults("after-commit", 1, kill=kill), "after-commit")
    run = runner(MemoryStore(), source, middleware=[crash])
    with pytest.raises(Killed):
        run.run([files(tmp_path, "a", "b")])
    run.close()
    assert source.finished_items == []  # killed after the commit, before anything was filed
