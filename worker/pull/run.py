"""One pull run against one PACS: query, remember, claim, retrieve, record.

Each step is recorded before the next begins:

1. a run row (``running``) with the study dates asked for;
2. the query (``query.py``): every matching instance recorded ``found`` (found again by a later
   run, the same row), those this model has a result for marked ``known`` (never retrieved);
   the run's dates now count as asked (its high-water mark);
3. claims of this host's dead processes freed at once; another host's wait for their lease;
4. ``max_retrieves`` threads, each claiming ``[pull] batch_size`` rows nobody holds, retrieving
   them (``retrieve.py``) and recording each outcome (retrieved, a failed attempt, or given
   back untried), until none is left, ``max_instances`` were taken, the daily window closed, or
   ``stop()``; a heartbeat renews the claims meanwhile;
5. the run row: ``done``, or ``failed`` with the reason.

A PACS unreachable, busy or silent (``PacsUnavailable``) is tried again, in the query and in
the retrieve, ``[pull] connection_attempts`` times with backoff; one that refuses is not.

Crash safety: SIGKILL at any point leaves the found rows found, claimed until the lease runs
out (or until the next run on this host); an instance written into the inbox before the kill
is found there by name and not asked for again. Nothing is recorded retrieved that is not in
the inbox (C-GET) or counted completed by the PACS (C-MOVE).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as clock_time

from sqlalchemy import Engine

from worker.config import PullSettings, PullSource
from worker.db import pulls
from worker.db.errors import database_errors
from worker.errors import PacsError
from worker.pull import query
from worker.pull.association import where
from worker.pull.identifiers import Instance
from worker.pull.period import Period, Window
from worker.pull.retrieve import Outcome, Retriever
from worker.receive.store import InboxWriter
from worker.runtime.lease import Heartbeat, beat_interval, process_alive
from worker.runtime.retry import Backoff, RetryPolicy, Stopped, retrying, wait

log = logging.getLogger(__name__)


@dataclass
class PullSummary:
    """What one run did, for its log line and the command's output."""

    source: str
    found: int = 0
    new: int = 0
    known: int = 0
    other_series: int = 0
    malformed: int = 0
    retrieved: int = 0
    failed: int = 0
    waiting: int = 0
    seconds: float = 0.0
    stopped: str = ""  # why retrieving stopped before everything was taken

    def line(self) -> str:
        rate = self.retrieved / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"{self.source}: {self.found} found ({self.new} new, {self.known} already screened), "
            f"{self.retrieved} retrieved, {self.failed} failed, {self.waiting} waiting, "
            f"{self.seconds:.1f} s, {rate:.1f} instances/s"
        )
        if self.malformed:
            text += f"; {self.malformed} malformed answers left out"
        return text + (f"; stopped: {self.stopped}" if self.stopped else "")


def owner_name() -> str:
    """This process, as its claims name it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Puller:
    """Pulls from ``source`` into ``writer``'s folder, recording in ``engine``.

    ``run()`` does one run (the steps above) and returns its summary; ``PacsError`` when the
    PACS refused or failed (the run recorded ``failed``), ``TransientError`` when it or the
    database could not be reached. ``stop()`` only sets an event: the batches in hand finish.
    """

    def __init__(
        self,
        source: PullSource,
        settings: PullSettings,
        engine: Engine,
        writer: InboxWriter,
        *,
        model_sha256: str = "",
        owner: str | None = None,
        now: Callable[[], datetime] = pulls.utcnow,
        local_time: Callable[[], clock_time] = lambda: datetime.now().time(),
    ):
        self.source = source
        self.settings = settings
        self.engine = engine
        self.retriever = Retriever(source, writer)
        self.model_sha256 = model_sha256
        self.owner = owner or owner_name()
        self.now = now
        self.local_time = local_time
        self.window = Window(source.window)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.max_instances = source.max_instances
        self._budget = source.max_instances
        # A PACS unreachable, busy or silent is tried again; one that refuses is not (PacsRejected
        # and failure statuses are no TransientError: the policy gives up on them at once).
        self.policy = RetryPolicy(
            initial=settings.backoff_base, maximum=settings.backoff_cap, attempts=settings.connection_attempts
        )
        self._backoff = Backoff(self.policy)

    def stop(self) -> None:
        self._stop.set()

    def limit(self, max_instances: int) -> None:
        """Retrieve at most ``max_instances`` per run (instead of the source's own limit)."""
        self.max_instances = max_instances

    def high_water(self) -> date | None:
        """The last study date a completed query of this source asked for."""
        with database_errors(), self.engine.connect() as conn:
            return pulls.high_water(conn, self.source.name)

    def run(self, period: Period | None, accessions: Sequence[str] = ()) -> PullSummary:
        started = time.monotonic()
        summary = PullSummary(self.source.name)
        with database_errors(), self.engine.begin() as conn:
            run_id = pulls.start_run(
                conn,
                self.source.name,
                self.owner,
                period.first if period else None,
                period.last if period else None,
                now=self.now(),
            )
        try:
            self._query(run_id, period, accessions, summary)
            self._take_over_dead()
            self._retrieve_all(summary)
        except (PacsError, Stopped) as exc:
            self._finish(run_id, summary, started, str(exc))
            raise
        self._finish(run_id, summary, started, None)
        log.log(logging.WARNING if summary.failed else logging.INFO, "%s", summary.line())
        return summary

    # -- the steps ------------------------------------------------------------------

    def _query(
        self, run_id: int, period: Period | None, accessions: Sequence[str], summary: PullSummary
    ) -> None:
        asked = f"studies of {period.first}..{period.last}" if period else "any date"
        if accessions:
            asked += f", {len(accessions)} accession numbers"
        log.info(
            "%s: asking for %s, modalities %s", where(self.source), asked, "/".join(self.source.modalities)
        )
        found = retrying(lambda: query.find(self.source, period, accessions), self.policy, self._stop)
        summary.found, summary.other_series, summary.malformed = (
            len(found.instances),
            found.other_series,
            found.malformed,
        )
        if found.malformed and not found.instances:
            raise PacsError(
                f"{where(self.source)}: every answer ({found.malformed}) was malformed: nothing to retrieve"
            )
        with database_errors(), self.engine.begin() as conn:
            now = self.now()
            summary.new = pulls.record_found(conn, self.source.name, run_id, found.instances, now=now)
            if self.model_sha256:
                pulls.mark_known(conn, self.source.name, self.model_sha256, now=now)
            # Answers left out: these dates are asked again next time (the mark does not move).
            pulls.mark_queried(conn, run_id, len(found.instances), now=now, complete=not found.malformed)

    def _take_over_dead(self) -> None:
        """Free the claims of this host's pull processes that are no longer running."""
        host = self.owner.rsplit(":", 1)[0]
        with database_errors(), self.engine.begin() as conn:
            held = pulls.holders(conn, self.source.name, f"{host}:", now=self.now())
            dead = [o for o in held if o != self.owner and not _running(o)]
            if dead:
                freed = pulls.take_over(conn, self.source.name, dead, now=self.now())
                log.info(
                    "%s: took over %d claims of %d stopped pull processes", self.source.name, freed, len(dead)
                )

    def _retrieve_all(self, summary: PullSummary) -> None:
        self._budget = self.max_instances
        self._failed: set[int] = set()
        beat = Heartbeat(self._renew, beat_interval(self.settings.lease_seconds))
        beat.start()
        try:
            with ThreadPoolExecutor(self.source.max_retrieves, thread_name_prefix="retrieve") as pool:
                futures = [pool.submit(self._work, summary) for _ in range(self.source.max_retrieves)]
                errors = [f.exception() for f in futures]
        finally:
            beat.stop()
        with database_errors(), self.engine.connect() as conn:
            states = pulls.counts(conn, self.source.name)
        summary.known, summary.waiting = states.get("known", 0), states.get("found", 0)
        if not summary.waiting and summary.stopped.startswith("max_instances"):
            summary.stopped = ""  # the budget ran out with the work
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def _work(self, summary: PullSummary) -> None:
        """One retrieving thread: claim, retrieve, record, until there is nothing left to do."""
        while True:
            reason = self._why_stop()
            if reason:
                if not summary.stopped:
                    summary.stopped = reason
                return
            take = self._reserve()
            if not take:
                summary.stopped = summary.stopped or f"max_instances ({self.max_instances}) taken"
                return
            with database_errors(), self.engine.begin() as conn:
                claims = pulls.claim(
                    conn,
                    self.source.name,
                    self.owner,
                    take,
                    lease_seconds=self.settings.lease_seconds,
                    now=self.now(),
                    exclude=self._failed,
                )
            self._reserve(give_back=take - len(claims))
            if not claims:
                return
            batch = [(c.id, _instance(c)) for c in claims]
            outcome = self.retriever.retrieve(batch, self._stop)
            self._record(outcome, summary)
            if outcome.error is None:
                with self._lock:
                    self._backoff.reset()
                continue
            with self._lock:
                delay = self._backoff.next_delay(outcome.error)
            if delay is None:
                self._stop.set()  # the other threads finish their batch, and stop
                raise outcome.error
            log.warning("%s; trying again in %.1f s", outcome.error, delay)
            if wait(self._stop, delay):
                return

    def _record(self, outcome: Outcome, summary: PullSummary) -> None:
        with database_errors(), self.engine.begin() as conn:
            now = self.now()
            retrieved = pulls.mark_retrieved(conn, self.owner, outcome.retrieved, now=now)
            failed = pulls.mark_failed(
                conn, self.owner, outcome.failed, max_attempts=self.settings.max_attempts, now=now
            )
            pulls.release(conn, self.owner, outcome.untried, now=now)
        with self._lock:
            summary.retrieved += retrieved
            summary.failed += failed
            self._failed.update(outcome.failed)  # tried again by the next run, not this one

    def _finish(self, run_id: int, summary: PullSummary, started: float, reason: str | None) -> None:
        summary.seconds = time.monotonic() - started
        with database_errors(), self.engine.begin() as conn:
            pulls.finish_run(
                conn,
                run_id,
                retrieved=summary.retrieved,
                failed=summary.failed,
                reason=reason,
                now=self.now(),
            )

    # -- limits ---------------------------------------------------------------------

    def _why_stop(self) -> str:
        if self._stop.is_set():
            return "asked to stop"
        if not self.window.open_at(self.local_time()):
            return f"outside the window {self.source.window}"
        return ""

    def _reserve(self, give_back: int = 0) -> int:
        """Take up to a batch of the run's ``max_instances`` (or give back what a claim did not use)."""
        with self._lock:
            if give_back:
                self._budget += give_back
                return 0
            take = min(self.settings.batch_size, self._budget)
            self._budget -= take
            return take

    def _renew(self) -> None:
        with database_errors(), self.engine.begin() as conn:
            pulls.renew(
                conn, self.source.name, self.owner, lease_seconds=self.settings.lease_seconds, now=self.now()
            )


def _instance(claim: pulls.Claim) -> Instance:
    fields = dataclasses.asdict(claim)
    del fields["id"], fields["attempts"]
    return Instance(**fields)


def _running(owner: str) -> bool:
    pid = owner.rsplit(":", 1)[-1]
    return not pid.isdigit() or process_alive(int(pid))
