"""The pipeline's seams: what it needs of a results store, a loaded model and a screening.

Each is a ``typing.Protocol``, so anything with the same members plugs in: the SQLite and
PostgreSQL ``worker.db.store.Store`` and the in-memory ``worker.db.memory.MemoryStore``
(``Store``); a bundle's ``BundleModel`` and an exported learner's ``LoadedModel``
(``Model``); the ``Predictor`` (``Screening``) and, for what a result records of what
screened it, the Ray engine's ``RayScreening`` (``Provenance``). They are
``runtime_checkable``: ``isinstance`` checks the members' names (tests/unit/test_ports.py),
not their signatures.

This module is a leaf of the pipeline: it imports only record types, never a model, an
engine, a source or a sink, so the stages, the loops and the app layer may all name it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from worker.db.outbox import OutboxItem
from worker.db.store import (
    AuditRecord,
    BatchSummary,
    FileStamp,
    FilingPlan,
    ResultRecord,
    ScannedRecord,
    StoredResult,
)

if TYPE_CHECKING:  # the decoder's types, for annotations only (the pipeline needs no decoder)
    from worker.answers import Answer
    from worker.decode import DecodedImage, Limits


@runtime_checkable
class Store(Protocol):
    """The results database as the pipeline and its loops use it (``worker/db/store.py``).

    ``record_batch`` is idempotent: a result already stored for its (content, model) is kept
    as it is, an audit row whose ``event_id`` is stored is skipped, a skip-index row replaces
    the path's earlier one; all of a batch is committed, or nothing. ``TransientError``: the
    database is unavailable, retry; any other error: the batch was refused.
    """

    def record_batch(
        self,
        results: Sequence[ResultRecord],
        audits: Sequence[AuditRecord],
        scanned: Sequence[ScannedRecord] = (),
        *,
        outbox: Sequence[OutboxItem] = (),
        before_commit: Any = None,
    ) -> BatchSummary: ...

    def known_results(self, content_sha256s: Iterable[str], model_sha256: str) -> dict[str, StoredResult]: ...

    def reported_by_other_models(
        self, content_sha256s: Iterable[str], model_sha256: str
    ) -> dict[str, str]: ...

    def scan_index(self, paths: Iterable[str], model_sha256: str) -> dict[str, FileStamp]: ...

    def plans_of(self, event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, FilingPlan]: ...

    def set_destination(self, event_id: uuid.UUID, destination_path: str) -> None: ...

    def refile(self, event_id: uuid.UUID, *, reason: str, destination_path: str) -> None: ...

    def close(self) -> None: ...


class Versioned(Protocol):
    """A model's preprocessing, as a result records it: its ``version`` string."""

    @property
    def version(self) -> str: ...


@runtime_checkable
class Model(Protocol):
    """A loaded, checked model: what the predictor, the records and the app use of it
    (``worker/model/bundle.py``'s ``BundleModel``, ``worker/model/learner.py``'s ``LoadedModel``)."""

    @property
    def path(self) -> Path: ...

    @property
    def sha256(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def vocab(self) -> Sequence[str]: ...

    @property
    def positive_index(self) -> int: ...

    @property
    def positive_class(self) -> str: ...

    @property
    def metadata(self) -> Mapping[str, Any]: ...

    @property
    def preprocessing(self) -> Versioned: ...

    def decode_and_prepare(self, path: Path, limits: Limits = ...) -> tuple[Any, DecodedImage]:
        """The file decoded, and as the model's input item."""
        ...

    def blank_item(self) -> Any:
        """A black image as an input item (warm-up)."""
        ...


@runtime_checkable
class Provenance(Protocol):
    """What screened a result, as its row records it: the ``Committer``'s ``screening``
    (a ``Predictor``, or the Ray engine's ``RayScreening``)."""

    @property
    def model(self) -> Model: ...

    @property
    def threshold(self) -> float: ...

    @property
    def device_name(self) -> str: ...


@runtime_checkable
class Screening(Provenance, Protocol):
    """The predictor as the loops see it (``worker/model/predictor.py``'s ``Predictor``):
    one answer per path, in order, in batches of ``batch_size``, decoded by ``workers``
    threads."""

    @property
    def batch_size(self) -> int: ...

    @property
    def workers(self) -> int: ...

    def warm_up(self) -> None: ...

    def predict(self, paths: Iterable[Path | str]) -> Iterator[Answer]: ...
