"""MLLP: the sender's transport for ``[[hl7.destinations]]``, each ORU waiting for its ACK.

One connection per batch (python-hl7's asyncio MLLP streams, ``hl7.mllp``: the framing
``<VT> message <FS><CR>`` is the library's), optionally TLS. The messages go one at a time: each
is written, then its ACK read and parsed with python-hl7, every wait bounded by the
destination's ``timeout``:

- MSA-1 ``AA`` (or ``CA``, enhanced mode) and MSA-2 our control id (MSH-10): delivered;
- ``AE`` / ``CE``: ``ApplicationError``, sent again later (the receiver says it may pass);
- ``AR`` / ``CR``: ``Rejected``, never sent again (the row is failed);
- no connection (``NoConnection``), no ACK within the timeout or the connection closed first
  (``NoAck``), an answer that is not an HL7 ACK (``BadAck``) or one for another control id
  (``WrongAck``): sent again later.

After ``NoAck``, ``BadAck`` or ``WrongAck`` the stream can no longer be trusted (a late ACK would
be read as the next message's): the connection is closed and the rest of the batch is left
untried, pending as it was. An ORU the receiver took but whose ACK was lost is sent again with
the same control id: dropping such a duplicate is the receiver's job (docs/hl7-fhir.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Sequence

import hl7
from hl7.mllp import InvalidBlockError, open_hl7_connection

from worker.config import Hl7Destination
from worker.errors import NotDelivered, Refused

DELIVERED, RETRY, REJECT = ("AA", "CA"), ("AE", "CE"), ("AR", "CR")  # MSA-1, HL7 table 0008


class NoConnection(NotDelivered):
    """The listener could not be reached (refused, unreachable, TLS failed, or too slow)."""


class NoAck(NotDelivered):
    """No ACK came within the timeout, or the connection closed before it."""


class BadAck(NotDelivered):
    """The answer is not an HL7 ACK (not an MLLP block, not HL7, no MSA, an unknown code)."""


class WrongAck(NotDelivered):
    """The ACK acknowledges another message control id than ours."""


class ApplicationError(NotDelivered):
    """AE: the receiver could not process it now; it may pass."""


class Rejected(Refused):
    """AR: the receiver refuses the message; sending it again cannot help."""


Answer = NotDelivered | Refused | None  # None: delivered


def where(destination: Hl7Destination) -> str:
    return f"mllp{'s' if destination.tls else ''}://{destination.host}:{destination.port}"


def tls_context(destination: Hl7Destination) -> ssl.SSLContext | None:
    """The TLS client context of a ``tls`` destination: its CA (or the system's), our certificate."""
    if not destination.tls:
        return None
    context = ssl.create_default_context(cafile=destination.tls_ca or None)
    if destination.tls_cert:
        context.load_cert_chain(destination.tls_cert, destination.tls_key or None)
    return context


def deliver(
    destination: Hl7Destination,
    messages: Sequence[bytes],
    answered: Callable[[int, Answer], None] = lambda index, answer: None,
) -> list[Answer]:
    """Send ``messages`` (ORUs, UTF-8) over one connection; an answer per message tried, in
    order: fewer than ``messages`` when the connection broke (the rest was not sent).
    ``answered(index, answer)`` is called with each answer before the next message is sent (the
    sender records it there, so a crash re-sends at most the message in flight).
    ``NoConnection`` when no connection could be made."""
    return asyncio.run(_deliver(destination, messages, tls_context(destination), answered))


async def _deliver(
    d: Hl7Destination,
    messages: Sequence[bytes],
    context: ssl.SSLContext | None,
    answered: Callable[[int, Answer], None],
) -> list[Answer]:
    try:
        reader, writer = await asyncio.wait_for(
            open_hl7_connection(d.host, d.port, ssl=context, server_hostname=d.host if context else None),
            d.timeout,
        )
    except TimeoutError:
        raise NoConnection(f"no connection to {where(d)} within {d.timeout:g} s") from None
    except (OSError, ssl.SSLError) as exc:
        raise NoConnection(f"no connection to {where(d)}: {exc.strerror or exc}") from None
    answers: list[Answer] = []
    try:
        for index, payload in enumerate(messages):
            answer = await _exchange(d, reader, writer, payload)
            answers.append(answer)
            answered(index, answer)
            if isinstance(answer, NoAck | BadAck | WrongAck):
                break
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
    return answers


async def _exchange(
    d: Hl7Destination, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> Answer:
    """One message out, its ACK in, judged."""
    try:
        writer.writeblock(payload)  # type: ignore[attr-defined]
        await asyncio.wait_for(writer.drain(), d.timeout)
        block = await asyncio.wait_for(reader.readblock(), d.timeout)  # type: ignore[attr-defined]
    except TimeoutError:
        return NoAck(f"no ACK from {where(d)} within {d.timeout:g} s")
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        return NoAck(f"{where(d)} closed the connection before the ACK")
    except (InvalidBlockError, ValueError) as exc:
        return BadAck(f"{where(d)} answered no MLLP block: {exc}")
    return judge(block, control_id(payload))


def control_id(payload: bytes) -> str:
    """MSH-10 of one of our messages."""
    return str(hl7.parse(payload.decode("utf-8")).segment("MSH")[10])


def judge(block: bytes, expected: str) -> Answer:
    """What an ACK says about the message whose control id is ``expected``."""
    try:
        msa = hl7.parse(block.decode("utf-8")).segment("MSA")
    except (UnicodeDecodeError, hl7.ParseException, KeyError, IndexError, ValueError):
        shown = block[:80].decode("utf-8", "replace")
        return BadAck(f"not an HL7 ACK: {shown!r}")
    code, acked, text = (_field(msa, n) for n in (1, 2, 3))
    if acked != expected:
        return WrongAck(f"ACK for control id {acked!r}, not ours {expected!r} (MSA-1 {code!r})")
    detail = f"{code}" + (f": {text}" if text else "")
    if code in DELIVERED:
        return None
    if code in RETRY:
        return ApplicationError(detail)
    if code in REJECT:
        return Rejected(detail)
    return BadAck(f"MSA-1 {code!r} is no acknowledgment code")


def _field(segment: hl7.Segment, n: int) -> str:
    return str(segment[n]) if len(segment) > n else ""
