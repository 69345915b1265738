"""What one association may cost: memory and time, whatever the peer sends.

pynetdicom reads each PDU whole (its length comes from the peer, up to 4 GiB), keeps each
data set in memory until its last fragment, and blocks in ``recv`` forever on an acceptor's
socket, which has no timeout. Three bounds, put on each association as it opens:

- ``bound_socket``: a PDU longer than ``pdu_limit`` ends the connection before it is read,
  and the socket gets a timeout, so a peer that stops halfway through a PDU is dropped;
- ``bound_data_set``: the data set of each message is kept in a ``BoundedBuffer``, which
  stops keeping bytes past ``max_instance_bytes`` (it goes on counting them): the C-STORE is
  then answered 0xA700 once its last fragment has arrived, and the association goes on.

They use two pynetdicom internals (the association's socket, the DIMSE provider's message
being assembled); tests/integration/test_receive.py fails if either changes.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from pynetdicom.dimse_messages import DIMSEMessage


class BoundedBuffer(io.BytesIO):
    """A data set's bytes, up to ``limit``; past it, nothing more is kept and ``overflowed``."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.received = 0
        self.overflowed = False

    def write(self, data: Any, /) -> int:  # any bytes-like object, as BytesIO takes
        n = memoryview(data).nbytes
        self.received += n
        if not self.overflowed and self.received > self.limit:
            self.overflowed = True
            self.seek(0)
            self.truncate()
        if self.overflowed:
            return n
        return super().write(data)


def bound_socket(assoc: Any, pdu_limit: int, timeout: float) -> None:
    """Refuse PDUs over ``pdu_limit`` bytes and give up on a read silent for ``timeout`` s."""
    sock = assoc.dul.socket
    sock.socket.settimeout(timeout)
    recv: Callable[[int], bytearray] = sock.recv

    def bounded_recv(nr_bytes: int) -> bytearray:
        if nr_bytes > pdu_limit:
            # pynetdicom treats an OSError here as the connection closing (Evt17).
            raise OSError(f"PDU of {nr_bytes} bytes is over the limit of {pdu_limit}")
        return recv(nr_bytes)

    sock.recv = bounded_recv


def bound_data_set(assoc: Any, max_instance_bytes: int) -> None:
    """Assemble every incoming message's data set in a ``BoundedBuffer``."""
    dimse = assoc.dimse
    receive = dimse.receive_primitive

    def bounded_receive(primitive: Any) -> None:
        if dimse.message is None:
            message = DIMSEMessage()
            message.data_set = BoundedBuffer(max_instance_bytes)
            dimse.message = message
        receive(primitive)

    dimse.receive_primitive = bounded_receive
