"""``xray-worker receive``: a DICOM Storage SCP that files what modalities and PACS send into
the inbox, for ``watch`` to screen (docs/receiving.md).

It only writes files: no model, no database, no pipeline (an import-linter contract), so it
starts in a second and keeps running while ``watch`` restarts.

- ``scp.py``: the associations, the SOP classes and transfer syntaxes, the log lines;
- ``store.py``: one instance -> one durable ``<SOPInstanceUID>.dcm`` in the inbox;
- ``limits.py``: what one association may cost in memory and time;
- ``peers.py``: who may send (AE titles, addresses, TLS);
- ``admission.py``: who gets a connection and a slot, and for how long (silent peers hold none).
"""

from __future__ import annotations

import logging
import os

import pydicom.config

from worker.config import Settings
from worker.errors import ConfigError
from worker.receive.scp import Receiver
from worker.receive.store import InboxWriter

__all__ = ["Receiver", "open_receiver", "open_writer", "quiet_dicom_logs"]


def _one_line(record: logging.LogRecord) -> bool:
    """A peer that sends garbage or hangs up is the peer's doing, not a traceback's: pynetdicom's
    records keep one line, but for an exception in our own handlers (a bug)."""
    if record.exc_info and "Exception in handler" not in record.getMessage():
        record.exc_info = None
        record.exc_text = None
    return True


def open_writer(settings: Settings) -> InboxWriter:
    """The writer into [inbox] path (with its umask), prepared: what ``receive`` and ``pull``
    write instances with. ``ConfigError`` when the folder cannot be made."""
    os.umask(int(settings.inbox.umask, 8))
    writer = InboxWriter(settings.inbox.path)
    try:
        writer.prepare()
    except OSError as exc:
        raise ConfigError(f"[inbox] path {settings.inbox.path}: {exc.strerror or exc}") from None
    return writer


def open_receiver(settings: Settings) -> Receiver:
    """The receiver of the [receive] settings, writing into [inbox] path (with its umask).
    ``ConfigError`` for settings it cannot use."""
    writer = open_writer(settings)
    quiet_dicom_logs()
    return Receiver(settings.receive, writer)


def quiet_dicom_logs() -> None:
    """pynetdicom logs every association at INFO; ``receive``'s and ``pull``'s own lines say
    what matters. pydicom's warnings on odd values would quote them (patient data): store.py
    checks what matters (a data set that parses to its end), and watch's decoder judges the rest."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("pynetdicom")]:
        logging.getLogger(name).addFilter(_one_line)
