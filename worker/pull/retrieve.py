"""Retrieving claimed instances: C-GET into the inbox, or C-MOVE to our own receiver.

**C-GET** (``retrieve = "get"``; no inbound port): one association per batch proposes the Get
model and, as SCP (role selection), each storage SOP class of the batch in every transfer
syntax the decoder reads, one context per compressed syntax, so the PACS sends each instance as
it holds it. One C-GET per instance, at IMAGE level: what was claimed comes back, nothing else.
Each instance the PACS sends is written by the receiver's own ``InboxWriter``
(``worker/receive/store.py``: a hidden temporary file, fsynced, parsed to its end, linked to
``<SOPInstanceUID>.dcm``, the folder fsynced) before Success is answered, and only an instance
so written counts as retrieved; ``watch`` screens it like any file in the inbox.

**C-MOVE** (``retrieve = "move"``): the same requests, asking the PACS to send to
``move_destination``, our ``xray-worker receive``, which writes into the inbox; an instance is
retrieved when the final status counts its sub-operation completed.

The final status's sub-operation counts (completed, failed, warning) are kept as the reason of
an instance that did not come. An instance already waiting in the inbox under its name (a run
killed after writing it) is not asked for again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import SecondaryCaptureImageStorage
from pynetdicom import build_role, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from worker.config import PullSource
from worker.errors import PacsError
from worker.pull.association import CANCEL, FAILURE, PENDING, SUCCESS, Answer, answers, associated
from worker.pull.identifiers import Instance, retrieve_identifier
from worker.receive.scp import TRANSFER_SYNTAXES, XRAY_STORAGE
from worker.receive.store import SUCCESS as STORED
from worker.receive.store import InboxWriter, Refused

log = logging.getLogger(__name__)

UNCOMPRESSED = TRANSFER_SYNTAXES[:2]  # explicit and implicit VR little endian, one context
# Proposed for instances whose SOP class the PACS did not say: CR, DX, and Secondary Capture
# (many scanned and exported chest films).
XRAY_CLASSES = (*XRAY_STORAGE, SecondaryCaptureImageStorage)
# Storage classes one association proposes at most (15 contexts each, 128 in all).
MAX_CLASSES = 8
MODELS = {
    ("study", "get"): StudyRootQueryRetrieveInformationModelGet,
    ("patient", "get"): PatientRootQueryRetrieveInformationModelGet,
    ("study", "move"): StudyRootQueryRetrieveInformationModelMove,
    ("patient", "move"): PatientRootQueryRetrieveInformationModelMove,
}


@dataclass
class Outcome:
    """What one batch came to, by pull table row id."""

    retrieved: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    untried: list[int] = field(default_factory=list)
    # The association failed or was lost: the rest of the batch is untried, and the run stops.
    error: PacsError | None = None


class Retriever:
    """Retrieves batches of ``(row id, Instance)`` from ``source`` into ``writer``'s folder."""

    def __init__(self, source: PullSource, writer: InboxWriter):
        self.source = source
        self.writer = writer
        self.model = MODELS[(source.query_model, source.retrieve)]

    def retrieve(self, batch: Sequence[tuple[int, Instance]], stop: threading.Event) -> Outcome:
        outcome = Outcome()
        todo = []
        for row, instance in batch:
            if (self.writer.folder / f"{instance.sop_instance_uid}.dcm").exists():
                outcome.retrieved.append(row)  # written by a run that died before recording it
            else:
                todo.append((row, instance))
        if todo:
            try:
                self._retrieve(todo, stop, outcome)
            except PacsError as exc:
                done = set(outcome.retrieved) | set(outcome.failed)
                outcome.untried = [row for row, _ in todo if row not in done]
                outcome.error = exc
        return outcome

    def _retrieve(self, todo: list[tuple[int, Instance]], stop: threading.Event, outcome: Outcome) -> None:
        get = self.source.retrieve == "get"
        store = _Store(self.writer)
        contexts: list[tuple[str, Sequence[str] | None]] = [(self.model, None)]
        roles, handlers = [], []
        if get:
            named = {i.sop_class_uid for _, i in todo if i.sop_class_uid}
            unnamed = XRAY_CLASSES if any(not i.sop_class_uid for _, i in todo) else ()
            classes = sorted(named | set(unnamed))[:MAX_CLASSES]
            for sop_class in classes:
                contexts.append((sop_class, UNCOMPRESSED))
                contexts += [(sop_class, [syntax]) for syntax in TRANSFER_SYNTAXES[2:]]
            roles = [build_role(sop_class, scp_role=True) for sop_class in classes]
            handlers = [(evt.EVT_C_STORE, store.handle)]
        with associated(self.source, contexts, roles=roles, handlers=handlers) as assoc:
            for index, (row, instance) in enumerate(todo):
                if stop.is_set():
                    outcome.untried += [r for r, _ in todo[index:]]
                    return
                final = self._one(assoc, instance, get)
                uid = instance.sop_instance_uid
                if (uid in store.stored) if get else _moved(final):
                    outcome.retrieved.append(row)
                else:
                    outcome.failed[row] = _why_not(final, store.refused.get(uid), get)
                    log.warning("%s: not retrieved: %s", uid, outcome.failed[row])

    def _one(self, assoc: Any, instance: Instance, get: bool) -> Answer | None:
        identifier = retrieve_identifier(instance)
        if get:
            responses = assoc.send_c_get(identifier, self.model)
        else:
            responses = assoc.send_c_move(identifier, self.source.move_destination, self.model)
        what = "C-GET" if get else "C-MOVE"
        final = None
        for answer in answers(assoc, responses, source=self.source, what=what):
            if answer.category != PENDING:
                final = answer
        return final


class _Store:
    """The C-STORE sub-operations of a C-GET: each instance into the inbox, durably, before
    Success is answered (called on the association's own thread)."""

    def __init__(self, writer: InboxWriter):
        self.writer = writer
        self.stored: set[str] = set()
        self.refused: dict[str, str] = {}

    def handle(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        preamble = b"\0" * 128 + b"DICM" + encode_file_meta(event.file_meta)
        try:
            self.writer.store((preamble, event.request.DataSet.getbuffer()))
        except Refused as refusal:
            self.refused[uid] = f"0x{refusal.status:04X} {refusal.reason}"
            return refusal.status
        self.stored.add(uid)
        return STORED


def _moved(final: Answer | None) -> bool:
    if final is None or final.category != SUCCESS:
        return False
    return int(final.status.get("NumberOfCompletedSuboperations", 0) or 0) >= 1


def _why_not(final: Answer | None, refusal: str | None, get: bool) -> str:
    what = "C-GET" if get else "C-MOVE"
    if refusal:
        return f"refused here: {refusal}"
    if final is None:
        return f"{what} ended without a final status"
    if final.category in (FAILURE, CANCEL):
        return f"{what} answered {final.describe()} ({final.counts()})"
    return f"{what} answered {final.describe()} ({final.counts()}), and the instance did not come"
