"""Notifications from the real daemon (on the in-memory fakes): started, positive, failure and
stopped reach the webhook, and a webhook that hangs does not slow screening down."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fakes import FakePredictor, MemoryStore, film
from webhook_server import WebhookServer

from worker.daemon import Daemon
from worker.notify import Dispatcher
from worker.notify.delivery import Webhook
from worker.notify.events import NotifyObserver
from worker.pipeline.observe import Committed, Observer, Observers
from worker.runtime.retry import RetryPolicy
from worker.sinks.filer import Folders
from worker.sources.claim import WorkArea
from worker.sources.inbox import Inbox


class Done(Observer):
    """Sets ``event`` once ``n`` files were committed."""

    def __init__(self, n: int):
        self.n, self.seen, self.event = n, 0, threading.Event()

    def committed(self, batch: Committed) -> None:
        self.seen += len(batch.items)
        if self.seen >= self.n:
            self.event.set()


def test_screening_goes_on_while_the_webhook_hangs_and_every_event_arrives_after(tmp_path: Path):
    server = WebhookServer(hang=True)
    dispatcher = Dispatcher(
        [Webhook(server.url, timeout=30)],  # longer than this whole test: only the release ends it
        events=("positive", "failure", "started", "stopped"),
        policy=RetryPolicy(attempts=1),
        flush_seconds=10,
    )
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    done = Done(8)
    daemon = Daemon(
        inbox=Inbox(inbox, stability_seconds=0, rescan_interval=1, polling=True, poll_interval=0.1),
        work=WorkArea(inbox, "w1"),
        predictor=FakePredictor(),
        store=MemoryStore(),
        folders=Folders(tmp_path / "processed", tmp_path / "failed"),
        batch_size=4,
        max_wait=0.05,
        worker_host="t",
        observer=Observers([NotifyObserver(dispatcher, worker="w1"), done]),
    )
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        assert server.wait_for(1)  # "started", now hanging in the webhook
        dropped = time.monotonic()
        for n in range(5):
            (inbox / f"p{n}.png").write_bytes(film("PNEUMONIA", 0.9, marker=str(n)))
        (inbox / "twin.png").write_bytes(film("PNEUMONIA", 0.9, marker="0"))  # a duplicate of p0
        (inbox / "n.png").write_bytes(film("NORMAL", 0.1))
        (inbox / "notes.txt").write_bytes(b"not an image\n")
        assert done.event.wait(10), "screening stalled behind the hanging webhook"
        assert time.monotonic() - dropped < 5
        assert len(server.requests) == 1 and dispatcher.queued == 6  # 5 positives and 1 failure wait
    finally:
        server.release()
        daemon.stop()
        runner.join(10)
        dispatcher.close()
        server.close()
    events = [b["event"] for b in server.bodies()]
    assert events[0] == "started" and events[-1] == "stopped"
    assert sorted(events[1:-1]) == ["failure"] + ["positive"] * 5  # no event for the duplicate
    failure = next(b["data"] for b in server.bodies() if b["event"] == "failure")
    assert failure["path"].endswith("notes.txt") and failure["reason"].startswith("not an image")
    assert failure["destination"].startswith(str(tmp_path / "failed"))
    positive = next(b["data"] for b in server.bodies() if b["event"] == "positive")
    assert positive["label"] == "PNEUMONIA" and len(positive["content_sha256"]) == 64
