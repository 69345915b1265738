"""One association with a PACS, and what its answers mean.

``associated`` opens it with every wait bounded by the source's settings (the TCP connection
and the association: ``association_timeout``; each DIMSE answer: ``dimse_timeout``; the
network: ``network_timeout``), turns each way it can fail into a typed error, and releases it
on every path (aborts it when the block failed). ``answers`` reads a C-FIND, C-GET or C-MOVE's
responses with the whole exchange bounded too (``query_timeout``): a PACS that answers Pending
forever is given up, as one that stops answering. Each DIMSE status is looked up in one table
(pynetdicom's ``code_to_category``): Pending, Success, Warning, Failure, Cancel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.status import code_to_category

from worker.config import PullSource
from worker.errors import PacsError, PacsRejected, PacsUnavailable

log = logging.getLogger(__name__)

PENDING, SUCCESS, WARNING, FAILURE, CANCEL = "Pending", "Success", "Warning", "Failure", "Cancel"
# A-ASSOCIATE-RJ result: 1 rejected for good, 2 rejected for now (the PACS is busy).
REJECTED_TRANSIENT = 0x02


@dataclass(frozen=True)
class Answer:
    """One response: its status code, that code's category, the status and the identifier."""

    code: int
    category: str
    status: Dataset
    identifier: Dataset | None

    def counts(self) -> str:
        """A C-GET or C-MOVE's sub-operation counts, as the log and the table say them."""
        s = self.status
        return (
            f"{s.get('NumberOfCompletedSuboperations', 0) or 0} completed, "
            f"{s.get('NumberOfFailedSuboperations', 0) or 0} failed, "
            f"{s.get('NumberOfWarningSuboperations', 0) or 0} warning sub-operations"
        )

    def describe(self) -> str:
        comment = str(self.status.get("ErrorComment", "") or "").strip()
        return f"0x{self.code:04X} ({self.category})" + (f": {comment}" if comment else "")


def where(source: PullSource) -> str:
    """A source as the logs name it."""
    return f"{source.name} ({source.ae_title}@{source.host}:{source.port})"


@contextmanager
def associated(
    source: PullSource,
    contexts: Sequence[tuple[str, Sequence[str] | None]],
    *,
    roles: Sequence[Any] = (),
    handlers: Sequence[Any] = (),
) -> Iterator[Any]:
    """An association with ``source`` proposing ``contexts`` (abstract syntax, transfer syntaxes
    or None for the default ones). ``PacsRejected`` when it is rejected for good,
    ``PacsUnavailable`` when it cannot be reached, is busy, or accepts none of the contexts."""
    ae = AE(ae_title=source.calling_ae_title)
    ae.connection_timeout = ae.acse_timeout = source.association_timeout
    ae.dimse_timeout = source.dimse_timeout
    ae.network_timeout = source.network_timeout
    for abstract, syntaxes in contexts:
        if syntaxes is None:
            ae.add_requested_context(abstract)
        else:
            ae.add_requested_context(abstract, list(syntaxes))
    try:
        assoc = ae.associate(
            source.host,
            source.port,
            ae_title=source.ae_title,
            ext_neg=list(roles),
            evt_handlers=list(handlers),
        )
    except OSError as exc:  # a name that does not resolve
        raise PacsUnavailable(f"{where(source)}: no connection: {exc.strerror or exc}") from None
    if assoc.is_rejected:
        raise _rejected(source, assoc)
    if not assoc.is_established:
        if assoc.is_aborted and assoc.acceptor.primitive is not None:
            raise PacsUnavailable(
                f"{where(source)}: accepted none of the proposed presentation contexts "
                f"({', '.join(sorted({str(a) for a, _ in contexts}))[:200]})"
            )
        raise PacsUnavailable(
            f"{where(source)}: no association: no connection, or no answer within "
            f"{source.association_timeout:g} s"
        )
    failed = True
    try:
        yield assoc
        failed = False
    finally:
        if assoc.is_established:
            assoc.abort() if failed else assoc.release()


def _rejected(source: PullSource, assoc: Any) -> PacsError:
    primitive = assoc.acceptor.primitive
    reason = f"{primitive.result_str}, {primitive.source_str}: {primitive.reason_str}" if primitive else "?"
    if primitive is not None and primitive.result == REJECTED_TRANSIENT:
        return PacsUnavailable(f"{where(source)} rejected the association for now ({reason})")
    return PacsRejected(
        f"{where(source)} rejected the association ({reason}): is our calling AE title "
        f"{source.calling_ae_title!r} known to it, and is {source.ae_title!r} its AE title?"
    )


def answers(
    assoc: Any, responses: Iterable[tuple[Dataset, Dataset | None]], *, source: PullSource, what: str
) -> Iterator[Answer]:
    """The responses to one request, checked: ``PacsUnavailable`` (the association aborted) when
    one does not come within ``dimse_timeout``, or the whole exchange outlasts ``query_timeout``."""
    deadline = time.monotonic() + source.query_timeout
    for status, identifier in responses:
        if not status or "Status" not in status:
            assoc.abort()
            raise PacsUnavailable(
                f"{where(source)}: {what}: no answer within {source.dimse_timeout:g} s, "
                "or the association was lost"
            )
        code = int(status.Status)
        answer = Answer(code, code_to_category(code), status, identifier)
        yield answer
        if answer.category == PENDING and time.monotonic() > deadline:
            assoc.abort()
            raise PacsUnavailable(
                f"{where(source)}: {what}: still pending after {source.query_timeout:g} s (query_timeout): "
                "given up"
            )


def refused(source: PullSource, what: str, answer: Answer) -> PacsError:
    """A Failure or Cancel status as the error a run stops with."""
    return PacsError(f"{where(source)}: {what} answered {answer.describe()}")
