"""The pipeline's seams: what it needs of a results store, a loaded model and a screening.

Each is a ``typing.Protocol``, so anything with the same members plugs in: the SQLite and
PostgreSQL ``worker.db.store.Store`` and the in-memory ``worker.db.memory.MemoryStore``
(``Store``); a bundle's ``BundleModel`` and an exported learner's ``LoadedModel``
(``Model``); the ``Predictor`` (``Screening``) and, for what a result records of what
screened it, the Ray engine's ``RayScreening`` (``Provenance``); the inbox daemon, the
archive walk and the Ray driver (``Source``); the ``--output`` file and any later sink
(``Sink``), which ``worker/pipeline/runner.py`` calls after each commit. They are
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
    from worker.decode import DecodedImage
    from worker.pipeline.item import Item


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
    """A model's preprocessing, as the decode stage and a result use it: the least side a
    JPEG may be decoded at (None: full size) and its ``version`` string."""

    @property
    def version(self) -> str: ...

    @property
    def min_side(self) -> int | None: ...


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

    def to_item(self, decoded: DecodedImage) -> Any:
        """A decoded image as the model's input item (the preprocess stage,
        ``worker/model/stages.py``: models never read files)."""
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


@runtime_checkable
class Source(Protocol):
    """Where the runner's items come from (``worker/pipeline/runner.py``), and what becomes of
    their files: the inbox daemon (``worker/daemon.py``), the archive walk
    (``worker/scan/run.py``), the Ray driver. The source makes the items and hands them to
    ``Runner.run`` in chunks; the runner asks it two things:

    - ``admit(decided)``: which of these decided items to commit now (the runner's thread,
      before the commit). The inbox keeps back files it lost to another worker and files to
      read again later; a scan admits them all;
    - ``finished(recorded)``: they are committed (the commit thread, after the middleware
      and the sinks). The inbox files them into processed/ or failed/; a scan does nothing.
    """

    def admit(self, decided: list[Item]) -> list[Item]: ...

    def finished(self, recorded: Sequence[Item]) -> None: ...


@runtime_checkable
class Sink(Protocol):
    """Something told of every committed batch, after the transaction (the ``--output`` file,
    ``worker/sinks/results_file.py``; the RIS/EHR messages next). What must be queued in the
    result's own transaction (the PACS objects) is an ``Outputs`` of the ``Committer``
    instead. A sink that raises is logged and skipped for that item (``runner.deliver``)."""

    def committed(self, items: Sequence[Item]) -> None: ...


@runtime_checkable
class Engine(Protocol):
    """The infer stage (``worker/model/predictor.py`` opens one): items -> logits and, when the
    gate asked for them, its features, in one pass; torch for an exported learner
    (``worker/model/torch_engine.py``), ONNX Runtime fp32 or int8 for a bundle
    (``worker/model/onnx_engine.py``)."""

    @property
    def device(self) -> Any: ...

    @property
    def device_name(self) -> str: ...

    @property
    def runtime(self) -> str: ...

    def run(self, items: list[Any]) -> tuple[Any, dict[str, Any] | None]: ...

    def activation(self, logits: Any) -> Any: ...
