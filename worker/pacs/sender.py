"""``xray-worker send``: deliver the outbox to the PACS destinations, until stopped.

Its own process (and systemd unit), apart from ``watch``: screening never waits on a PACS,
a PACS outage only grows the outbox, and the sender can be restarted, or stopped for a PACS
migration, without touching screening.

Per destination, a step takes up to ``[pacs] batch_size`` due rows and opens ONE association
for them, proposing only the SOP classes in the batch: explicit and implicit VR little endian,
and each compressed transfer syntax an object is encoded in, as a context of its own. Each
object is sent with C-STORE; the answers are recorded in one transaction when the batch ends:

- 0x0000, or a warning 0xB000, 0xB006, 0xB007: stored -> ``delivered``;
- any other status, an association refused or lost, no answer: attempt + 1, retried after
  ``backoff_base`` x 2^(attempts-1) seconds with jitter, at most ``backoff_cap``; ``failed``
  with the reason after ``max_attempts``.

Crash safety: a row changes only after the destination answered it, so a SIGKILL at any
moment leaves every unanswered object ``pending``, and it is sent again. An object the PACS
stored just before the kill is then sent twice, which is harmless: the same SOP Instance UID
replaces (or is ignored by) the PACS, never duplicated.

With ``storage_commitment``, the stored objects are recorded as ``delivered`` with a new
Transaction UID first, then one N-ACTION asks for their commitment (commitment.py).

A destination with a ``dicomweb_url`` gets each batch as one STOW-RS request instead
(stow.py): ``delivered`` only what the answer lists as stored; a refused object is retried, or
``failed`` at once when its failure reason says no retry can help; no answer, or an HTTP error:
the whole batch is retried, with the same backoff.

The RIS and the EHR are destinations of the same loop, with the same retries, backoff and
``max_attempts``: an ``[[hl7.destinations]]`` gets its ORUs over MLLP (``worker/ris/mllp.py``,
one connection per batch, each message waiting for its ACK), an ``[[fhir.destinations]]`` its
Bundles by HTTP POST (``worker/ris/fhir_client.py``). Their answers are ``NotDelivered``
(retried) or ``Refused`` (failed at once), recorded like a C-STORE's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance
from pynetdicom.status import code_to_category
from sqlalchemy import Engine

from worker.config import FhirDestination, Hl7Destination, PacsDestination, PacsSettings, Settings
from worker.db import outbox
from worker.db.engine import make_engine
from worker.db.errors import database_errors
from worker.db.migrate import require_head
from worker.errors import ConfigError, NotDelivered, Refused, TransientError
from worker.pacs import stow
from worker.pacs.commitment import CommitmentListener, ReportHandler, request
from worker.ris import fhir_client, mllp
from worker.runtime.retry import Backoff, RetryPolicy, wait

log = logging.getLogger(__name__)

# Success, and the Storage Service's warnings: coerced, elements discarded, not validated.
STORED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
Destination = PacsDestination | Hl7Destination | FhirDestination


@dataclass
class Batch:
    """What one association did with its rows."""

    destination: Destination
    stored: list[outbox.Due] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)  # row id -> reason, to retry
    broken: dict[int, str] = field(default_factory=dict)  # row id -> reason, never retried
    committing: str | None = None  # the commitment request's Transaction UID
    recorded: bool = False  # each answer already recorded as it came (MLLP)


class SenderObserver:
    """What the sender reports after each batch (its metrics: ``worker/metrics/sender.py``);
    this default does nothing."""

    def batch(self, destination: str, *, sent: int, retried: int, failed: int, seconds: float) -> None:
        """One batch to ``destination``: objects stored, to be tried again, failed for good."""


class Sender:
    """Delivers the outbox of ``engine`` to ``settings.destinations``.

    ``step()`` sends one batch per destination and returns how many rows it handled (the
    tests call it); ``run()`` repeats it until ``stop()``, waiting ``poll_interval`` when
    nothing was due. ``stop()`` only sets an event: the batch in hand is finished and recorded.
    ``passwords`` maps a DICOMweb or FHIR destination's name to its password or token; ``ris``:
    the HL7 and FHIR destinations, delivered after the PACS ones in each step.
    """

    def __init__(
        self,
        settings: PacsSettings,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = outbox.utcnow,
        rng: random.Random | None = None,
        passwords: Mapping[str, str] | None = None,
        observer: SenderObserver | None = None,
        ris: Sequence[Hl7Destination | FhirDestination] = (),
    ):
        self.settings = settings
        self.destinations: tuple[Destination, ...] = (*settings.destinations, *ris)
        self.observer = observer or SenderObserver()
        self.passwords = dict(passwords or {})
        self.engine = engine
        self.clock = clock
        self.rng = rng or random.Random()
        self.report_handler = ReportHandler(settings, engine, lambda: self.retry_delay(1))
        self.listener = (
            CommitmentListener(settings, self.report_handler) if settings.commitment_port else None
        )
        self._stop = threading.Event()

    # -- running ------------------------------------------------------------------

    def run(self) -> None:
        if self.listener is not None:
            self.listener.start()
        log.info(
            "sending as %s to %s",
            self.settings.ae_title,
            ", ".join(f"{d.name} ({where(d)})" for d in self.destinations),
        )
        outage = Backoff(RetryPolicy(initial=1.0, maximum=60.0))
        try:
            while not self._stop.is_set():
                try:
                    handled = self.step()
                except TransientError as exc:  # the database: wait it out, send nothing meanwhile
                    delay = outage.next_delay(exc) or 60.0
                    log.warning("outbox unavailable: %s; trying again in %.0f s", exc, delay)
                    wait(self._stop, delay)
                    continue
                outage.reset()
                if not handled:
                    wait(self._stop, self.settings.poll_interval)
        finally:
            if self.listener is not None:
                self.listener.stop()

    def stop(self) -> None:
        self._stop.set()

    def step(self) -> int:
        """One batch per destination; the number of rows handled."""
        handled = 0
        for destination in self.destinations:
            if self._stop.is_set():
                break
            handled += self.deliver(destination)
        return handled

    def backlog(self) -> list[outbox.Backlog]:
        """What each destination still has to take (``TransientError``: the database is down)."""
        with database_errors(), self.engine.connect() as conn:
            return outbox.backlog(conn, self.clock())

    def retry_delay(self, attempt: int) -> float:
        """Seconds before attempt ``attempt`` + 1: base x 2^(attempt-1), jittered, capped."""
        delay = min(self.settings.backoff_cap, self.settings.backoff_base * 2 ** min(attempt - 1, 60))
        return min(self.settings.backoff_cap, delay * self.rng.uniform(0.75, 1.25))

    # -- one batch ----------------------------------------------------------------

    def deliver(self, destination: Destination) -> int:
        """Send the due rows of ``destination`` (one batch, one association or connection) and
        record the answers."""
        now = self.clock()
        with database_errors(), self.engine.begin() as conn:
            if isinstance(destination, PacsDestination) and destination.storage_commitment:
                older = now - timedelta(seconds=self.settings.commitment_timeout)
                expired = outbox.expire_commitments(conn, destination.name, older)
                if expired:
                    log.warning(
                        "%s: %d objects had no storage commitment report: sending again",
                        destination.name,
                        expired,
                    )
            rows = outbox.due(conn, destination.name, self.settings.batch_size, now)
        if not rows:
            return 0
        started = time.monotonic()
        batch = Batch(destination)
        if isinstance(destination, Hl7Destination):
            self._send_hl7(rows, batch)
        elif isinstance(destination, FhirDestination):
            self._send_fhir(rows, batch)
        else:
            datasets = self._read(rows, batch)
            if datasets and destination.dicomweb_url:
                self._send_stow(datasets, batch)
            elif datasets:
                self._send(datasets, batch)
        if not batch.recorded:
            self._record(batch, [r for r in rows if r.id not in batch.broken])
        seconds = time.monotonic() - started
        gave_up = sum(
            1 for r in rows if r.id in batch.errors and r.attempts + 1 >= self.settings.max_attempts
        )
        self.observer.batch(
            destination.name,
            sent=len(batch.stored),
            retried=len(batch.errors) - gave_up,
            failed=len(batch.broken) + gave_up,
            seconds=seconds,
        )
        line = "%s (%s): %d sent, %d stored, %d to retry, %d failed, %.2f s, %.1f objects/s%s"
        level = logging.INFO if not (batch.errors or batch.broken) else logging.WARNING
        first_error = next(iter(batch.errors.values()), "") or next(iter(batch.broken.values()), "")
        log.log(
            level,
            line,
            destination.name,
            where(destination),
            len(rows),
            len(batch.stored),
            len(batch.errors),
            len(batch.broken),
            seconds,
            len(rows) / seconds if seconds > 0 else 0.0,
            f"; {first_error}" if first_error else "",
        )
        return len(rows)

    def _send_hl7(self, rows: Sequence[outbox.Due], batch: Batch) -> None:
        """The batch's ORUs over one MLLP connection, each ACK recorded as it comes (a crash sends
        again at most the message in flight); the rows after a broken exchange stay untried."""
        assert isinstance(batch.destination, Hl7Destination)

        def answered(index: int, answer: NotDelivered | Refused | None) -> None:
            one = Batch(batch.destination)
            _note(one, rows[index], answer)
            self._record(one, [rows[index]])
            _note(batch, rows[index], answer)

        try:
            mllp.deliver(batch.destination, [row.payload for row in rows], answered)
        except NotDelivered as exc:  # no connection: every row tried once
            batch.errors.update({row.id: exc.reason for row in rows})
            return
        batch.recorded = True

    def _send_fhir(self, rows: Sequence[outbox.Due], batch: Batch) -> None:
        """Each Bundle in a POST of its own."""
        d = batch.destination
        assert isinstance(d, FhirDestination)
        for row in rows:
            try:
                fhir_client.post(d, row.payload, secret=self.passwords.get(d.name, ""))
            except (NotDelivered, Refused) as exc:
                _note(batch, row, exc)
            else:
                _note(batch, row, None)

    def _read(self, rows: Sequence[outbox.Due], batch: Batch) -> list[tuple[outbox.Due, Dataset]]:
        """The rows' payloads as data sets; one that is not DICOM can never be sent."""
        datasets = []
        for row in rows:
            try:
                ds = dcmread(BytesIO(row.payload))
                ds.file_meta.TransferSyntaxUID  # noqa: B018 (a payload must say how it is encoded)
            except (InvalidDicomError, AttributeError, ValueError, EOFError, OSError) as exc:
                batch.broken[row.id] = f"payload is not a DICOM Part 10 file: {exc}"
                continue
            datasets.append((row, ds))
        return datasets

    def _application_entity(self, datasets: Sequence[tuple[outbox.Due, Dataset]], commitment: bool) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = s.association_timeout
        # Per SOP class: one context for explicit/implicit little endian, and one for each
        # compressed syntax an object is in (a peer accepts one syntax per context, and an
        # image cannot be sent in another compressed syntax than its own).
        contexts: dict[str, list[str]] = {}
        for row, ds in datasets:
            contexts.setdefault(row.sop_class_uid, [])
            native = str(ds.file_meta.TransferSyntaxUID)
            if native not in UNCOMPRESSED and native not in contexts[row.sop_class_uid]:
                contexts[row.sop_class_uid].append(native)
        for sop_class, compressed in sorted(contexts.items()):
            ae.add_requested_context(sop_class, list(UNCOMPRESSED))
            for syntax in compressed:
                ae.add_requested_context(sop_class, syntax)
        if commitment:
            ae.add_requested_context(StorageCommitmentPushModel)
        return ae

    def _send(self, datasets: list[tuple[outbox.Due, Dataset]], batch: Batch) -> None:
        d = batch.destination
        ae = self._application_entity(datasets, d.storage_commitment)
        handlers: list[Any] = [(evt.EVT_CONN_OPEN, _no_delay)]
        if d.storage_commitment:
            handlers.append((evt.EVT_N_EVENT_REPORT, self.report_handler))
        where = f"{d.ae_title}@{d.host}:{d.port}"
        try:
            assoc = ae.associate(d.host, d.port, ae_title=d.ae_title, evt_handlers=handlers)
        except OSError as exc:  # a name that does not resolve, a refused socket option
            assoc = None
            reason = f"no association with {where}: {exc}"
        else:
            reason = f"no association with {where}: {_why_not(assoc)}"
        if assoc is None or not assoc.is_established:
            batch.errors.update({row.id: reason for row, _ in datasets})
            return
        try:
            for index, (row, ds) in enumerate(datasets):
                if not assoc.is_established:
                    lost = f"association with {where} lost: {_why_not(assoc)}"
                    batch.errors.update({r.id: lost for r, _ in datasets[index:]})
                    break
                self._store(assoc, row, ds, batch)
            if d.storage_commitment and batch.stored and assoc.is_established:
                self._request_commitment(assoc, batch)
        finally:
            if assoc.is_established:
                assoc.release()

    def _send_stow(self, datasets: list[tuple[outbox.Due, Dataset]], batch: Batch) -> None:
        """One STOW-RS request for the batch; stored only what its answer lists as stored."""
        d = batch.destination
        rows = [row for row, _ in datasets]
        try:
            answer = stow.store(
                d.dicomweb_url,
                [row.payload for row in rows],
                username=d.username,
                password=self.passwords.get(d.name, ""),
                timeout=d.http_timeout,
            )
        except stow.StowError as exc:
            batch.errors.update({row.id: str(exc) for row in rows})
            return
        for row in rows:
            uid = row.sop_instance_uid
            if uid in answer.failed:
                reason, permanent = answer.failed[uid]
                (batch.broken if permanent else batch.errors)[row.id] = reason
            elif uid in answer.stored:
                batch.stored.append(row)
            else:
                batch.errors[row.id] = f"not listed as stored in the STOW-RS answer (HTTP {answer.status})"

    def _store(self, assoc: Any, row: outbox.Due, ds: Dataset, batch: Batch) -> None:
        try:
            status = assoc.send_c_store(ds)
        except ValueError as exc:  # no accepted presentation context for it
            batch.errors[row.id] = f"not sent: {exc}"
            return
        code = int(status.get("Status", -1)) if status else -1
        if code in STORED:
            batch.stored.append(row)
        elif code < 0:
            batch.errors[row.id] = "no answer to C-STORE (timeout, abort or invalid response)"
        else:
            comment = str(status.get("ErrorComment", "") or "")
            batch.errors[row.id] = f"C-STORE answered 0x{code:04X} ({code_to_category(code)})" + (
                f": {comment}" if comment else ""
            )

    def _request_commitment(self, assoc: Any, batch: Batch) -> None:
        """Record the stored rows as awaiting commitment, then ask for it (see the module)."""
        uid = str(generate_uid())
        with database_errors(), self.engine.begin() as conn:
            outbox.mark_delivered(conn, [r.id for r in batch.stored], now=self.clock(), transaction_uid=uid)
        batch.committing = uid
        info = request(uid, [(r.sop_class_uid, r.sop_instance_uid) for r in batch.stored])
        try:
            status, _ = assoc.send_n_action(
                info, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
            )
            code = int(status.get("Status", -1)) if status else -1
        except ValueError as exc:  # the destination refused the Storage Commitment context
            code, status = -1, None
            reason = f"storage commitment not requested: {exc}"
        else:
            reason = (
                f"storage commitment request answered 0x{code:04X}" if code >= 0 else "no answer to N-ACTION"
            )
        if code == 0x0000:
            return
        failed = {r.sop_instance_uid: reason for r in batch.stored}
        with database_errors(), self.engine.begin() as conn:
            outbox.mark_committed(
                conn, batch.destination.name, uid, (), failed, delay=self.retry_delay(1), now=self.clock()
            )

    def _record(self, batch: Batch, rows: Sequence[outbox.Due]) -> None:
        """Every answer of the batch in one transaction."""
        now = self.clock()
        attempts = {r.id: r.attempts for r in rows}
        with database_errors(), self.engine.begin() as conn:
            if batch.stored and batch.committing is None:
                outbox.mark_delivered(conn, [r.id for r in batch.stored], now=now)
            by_attempt: dict[int, dict[int, str]] = {}
            for row_id, reason in batch.errors.items():
                by_attempt.setdefault(attempts[row_id] + 1, {})[row_id] = reason
            for attempt, errors in sorted(by_attempt.items()):
                outbox.mark_retry(
                    conn,
                    errors,
                    delay=self.retry_delay(attempt),
                    max_attempts=self.settings.max_attempts,
                    now=now,
                )
            if batch.broken:
                outbox.mark_failed(conn, batch.broken, now=now)


def _note(batch: Batch, row: outbox.Due, answer: NotDelivered | Refused | None) -> None:
    """A RIS or EHR's answer to one row: delivered (None), to retry, or failed."""
    if answer is None:
        batch.stored.append(row)
    elif isinstance(answer, Refused):
        batch.broken[row.id] = answer.reason
    else:
        batch.errors[row.id] = answer.reason


def where(destination: Destination) -> str:
    """A destination as the logs name it: its URL, or AE title, host and port."""
    if isinstance(destination, Hl7Destination):
        return mllp.where(destination)
    if isinstance(destination, FhirDestination):
        return destination.base_url
    if destination.dicomweb_url:
        return destination.dicomweb_url
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def passwords(
    destinations: Sequence[PacsDestination | FhirDestination], environ: Mapping[str, str]
) -> dict[str, str]:
    """Each DICOMweb destination's password and each FHIR destination's token or password, from
    the environment variable its ``password_env`` or ``secret_env`` names; ``ConfigError`` naming
    the variable when it is not set."""
    found = {}
    for d in destinations:
        section, key = ("fhir", "secret_env") if isinstance(d, FhirDestination) else ("pacs", "password_env")
        variable = getattr(d, key)
        if not variable:
            continue
        if variable not in environ:
            raise ConfigError(
                f"[{section}.destinations] {d.name}: {key} = {variable!r}, "
                f"but the environment variable {variable} is not set"
            )
        found[d.name] = environ[variable]
    return found


def _no_delay(event: Any) -> None:
    """Send each PDU at once: with Nagle's algorithm, a C-STORE's small command PDU waits for the
    peer's delayed ACK (about 40 ms per object on Linux)."""
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _why_not(assoc: Any) -> str:
    if assoc.is_rejected:
        return "rejected (is our AE title known to it?)"
    if assoc.is_aborted:
        return "aborted"
    return "no connection, or no answer in time"


def open_sender(
    settings: Settings,
    *,
    only: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    observer: SenderObserver | None = None,
) -> Sender:
    """The sender of the [pacs], [hl7] and [fhir] destinations on the [database] outbox, for
    those named in ``only`` (none: all), with DICOMweb and FHIR secrets from ``environ`` (default:
    this process's),
    reporting each batch to ``observer`` (its metrics).
    ``ConfigError`` for a database not at head, nothing to send to or a password variable not
    set, ``TransientError`` when the database is down."""
    pacs = settings.pacs
    ris = (*settings.hl7.destinations, *settings.fhir.destinations)
    if only:
        pacs = dataclasses.replace(pacs, destinations=tuple(d for d in pacs.destinations if d.name in only))
        ris = tuple(d for d in ris if d.name in only)
    if not (pacs.destinations or ris):
        raise ConfigError(
            "nothing to send to: add a [[pacs.destinations]] (docs/pacs-delivery.md), "
            "[[hl7.destinations]] or [[fhir.destinations]] table (docs/hl7-fhir.md)"
        )
    fhir = [d for d in ris if isinstance(d, FhirDestination)]
    secrets = passwords([*pacs.destinations, *fhir], os.environ if environ is None else environ)
    engine = make_engine(settings.database.url)
    with database_errors():
        require_head(engine)
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
    return Sender(pacs, engine, passwords=secrets, observer=observer, ris=ris)
