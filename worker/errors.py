"""The error hierarchy: each class says what happens next to the file or the process.

- PermanentError: this file can never succeed; it goes to failed/ with its reason.
- TransientError: the world is temporarily wrong (database down, share gone); retry later.
- ConfigError / ModelError: the process cannot start; exit with a clear message.
- UsageError: the command line is wrong (exit 2).
- NotDelivered: a RIS or EHR did not take a message (no connection, no or a bad answer, an
  error it says may pass): the outbox row is sent again with backoff. Refused: it refused the
  message for good (HL7 AR, an HTTP 4xx): the row is failed.
- PacsError: a PACS refused or failed what ``pull`` asked (exit 69); PacsUnavailable: it could
  not be reached or did not answer in time (a TransientError, exit 75).
"""

from __future__ import annotations


class XrayScreenError(Exception):
    """Base class of every error this project raises on purpose."""


class PermanentError(XrayScreenError):
    """Retrying will not help: the file itself is the problem."""

    @property
    def reason(self) -> str:
        return str(self)


class DecodeError(PermanentError):
    """The file is not a readable PNG, JPEG or DICOM chest X-ray."""


class TransientError(XrayScreenError):
    """Retrying later may succeed (I/O hiccup, database restarting, share reconnecting)."""


class ReadError(TransientError):
    """The file could not be read (permission denied, vanished, I/O error on a share)."""


class ClusterError(TransientError):
    """The Ray cluster of ``scan --engine ray`` cannot be reached, or lost its actors."""


class ConfigError(XrayScreenError):
    """A setting is missing or invalid; the message names the key and where it came from."""


class UsageError(XrayScreenError):
    """The command line asks for something that cannot be done (exit 2): the message says why."""


class ModelError(XrayScreenError):
    """The model file cannot be used: missing, untrusted, tampered with, or not a learner."""


class PacsError(XrayScreenError):
    """A PACS refused what was asked (the association, a C-FIND or C-GET failure status) or
    answered what cannot be used; the run stops, and what it recorded before stands."""


class PacsRejected(PacsError):
    """The PACS rejected the association: is our calling AE title known to it, its AE title right?"""


class PacsUnavailable(PacsError, TransientError):
    """The PACS could not be reached, or did not answer in time: try again later."""


class MalformedIdentifier(PacsError):
    """A C-FIND answer whose identifier lacks a key or holds a value that is not what its VR allows."""


class _Kind:
    """An error whose ``reason`` starts with its class's name: what kind of failure it was."""

    @property
    def reason(self) -> str:
        return f"{type(self).__name__}: {self}"


class NotDelivered(_Kind, TransientError):
    """A RIS or EHR did not take a message: no connection, no answer in time, an answer that is
    not one, or an error it says may pass. The outbox row is sent again, with backoff, its
    ``last_error`` the ``reason``."""


class Refused(_Kind, PermanentError):
    """A RIS or EHR refused a message for good (HL7 AR, an HTTP 4xx): the outbox row is failed,
    with the ``reason``, and waits for an operator."""
