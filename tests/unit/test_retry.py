"""worker/runtime/retry.py: one policy, one interruptible wait, for every loop."""

from __future__ import annotations

import threading
import time

import pytest

from worker.errors import DecodeError, TransientError
from worker.pipeline.commit import Committer
from worker.runtime.retry import Backoff, RetryPolicy, Stopped, retrying
from worker.scan.run import SCAN_RETRY


def test_the_policy_doubles_to_its_ceiling_and_gives_up_only_when_told():
    policy = RetryPolicy(initial=1, maximum=8, jitter=0)
    assert [policy.delay(TransientError(), n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert RetryPolicy(attempts=3).delay(TransientError(), 3) is None
    assert RetryPolicy().delay(DecodeError("not an image"), 1) is None  # only transient errors
    assert SCAN_RETRY.attempts == 8 and Backoff().policy.attempts is None  # the daemon never gives up
    jittered = [RetryPolicy(initial=10, jitter=0.1).delay(TransientError(), 1) for _ in range(50)]
    assert all(9 <= d <= 11 for d in jittered) and len(set(jittered)) > 1


def test_retrying_returns_after_transient_failures_and_raises_when_the_policy_gives_up():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("database is locked")
        return "done"

    quick = RetryPolicy(initial=0.001, maximum=0.001, attempts=5)
    assert retrying(flaky, quick, threading.Event()) == "done" and len(calls) == 3
    with pytest.raises(TransientError, match="down"):
        retrying(lambda: (_ for _ in ()).throw(TransientError("down")), quick, threading.Event())
    with pytest.raises(DecodeError):  # never retried
        retrying(lambda: (_ for _ in ()).throw(DecodeError("bad")), quick, threading.Event())


def test_stop_ends_a_wait_for_a_retry_within_a_second():
    """The scan's committer once slept with time.sleep: stop() could not end a 60 s backoff."""
    stop = threading.Event()
    committer = Committer(
        store=None,
        screening=None,
        worker_host="t",
        worker_id="scan",
        retry=RetryPolicy(initial=60, maximum=60),
        stop=stop,
    )
    threading.Timer(0.3, stop.set).start()
    start = time.monotonic()
    with pytest.raises(Stopped):
        committer.retrying(lambda: (_ for _ in ()).throw(TransientError("database down")))
    assert time.monotonic() - start < 1.3
