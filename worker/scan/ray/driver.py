"""``xray-worker scan --engine ray``: the archive scan, executed with Ray Data.

The same scan as ``worker.scan`` (same skip index, decoding, preprocessing, model, labels
and database rows), spread over a Ray cluster:

1. plan (driver): walk the roots, streaming, and ask the skip index which files are new or
   changed, one query per chunk; those files become the work list, in blocks of
   ``[ray] block_files``. Only paths, sizes and mtimes are held: about 150 bytes a file;
2. ``Prepare`` actors (one CPU each): hash, skip content this model already screened,
   decode and apply the learner's item transforms (``worker.scan.ray.stages``);
3. ``Screen`` actors (``num_gpus`` each, one pool sized to the cluster): the batched model,
   with ``[inference] batch_size``;
4. commit (driver): each batch that comes back is settled (content screened earlier, in the
   database or in this run, is a duplicate with that verdict) and committed with the
   results, audit rows and skip-index rows in one transaction (``worker.scan.commit``).

Ray Data streams the work list through the actors, so decoding, inference and the
database overlap. A scan stopped at any point resumes at its last commit, as the local
one does; the archive is only read.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from worker.answers import Answer, Failure, Prediction
from worker.db.store import chunks
from worker.errors import ClusterError, TransientError
from worker.outcome import Outcome
from worker.pipeline.counts import Counts
from worker.pipeline.item import Item
from worker.pipeline.runner import Runner
from worker.scan.ray.stages import Batch, Prepare, Screen, StageSpec, decoded_from_facts
from worker.scan.run import ScanRun, scan_item
from worker.sources.walk import FoundFile

log = logging.getLogger("worker.scan")
INDEX_CHUNK = 500  # paths per skip-index query while planning


@dataclass(frozen=True)
class Pool:
    """How many actors of each stage, and what each reserves."""

    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    decoders: int

    def describe(self) -> str:
        where = (
            f"{self.gpus_per_actor:g} GPU each"
            if self.gpus_per_actor
            else f"{self.cpus_per_actor:g} CPU each"
        )
        return f"{self.actors} inference actor(s) ({where}), {self.decoders} decoding actor(s)"


def size_pool(resources: dict[str, float], ray_settings: Any, device: str) -> Pool:
    """Actor counts for a cluster with ``resources`` (``ray.cluster_resources()``).

    With GPUs (and a device that may use them), one inference actor per ``gpus_per_actor``
    GPUs; without, ``actors`` or one, on CPUs. Decoders take the CPUs that are left.
    """
    gpus = float(resources.get("GPU", 0)) if device != "cpu" else 0.0
    cpus = float(resources.get("CPU", 1))
    use_gpus = gpus > 0 and ray_settings.gpus_per_actor > 0
    gpus_per_actor = ray_settings.gpus_per_actor if use_gpus else 0.0
    actors = ray_settings.actors or (max(1, int(gpus // gpus_per_actor)) if use_gpus else 1)
    cpus_per_actor = ray_settings.cpus_per_actor
    decoders = ray_settings.decoders or max(1, int(cpus - actors * cpus_per_actor))
    return Pool(actors, gpus_per_actor, cpus_per_actor, decoders)


class RayScreening:
    """The model as the driver knows it (to describe results) and the Ray pipeline that runs
    it; ``model``, ``threshold`` and ``device_name`` as a ``Predictor`` has them."""

    def __init__(self, model: Any, spec: StageSpec, pool: Pool, block_files: int):
        self.model = model
        self.spec = spec
        self.pool = pool
        self.block_files = block_files
        self.batch_size = spec.inference.batch_size
        self.threshold = float(model.metadata.get("threshold", 0.0) or 0.0)
        self.device_name = "ray"  # until a batch says which device screened it

    def dataset(self, work: list[Any]) -> Any:
        """The work list (Arrow tables of path, size, mtime_ns) through Prepare and Screen."""
        import ray.data

        p = self.pool
        ds = ray.data.from_arrow(work)
        ds = ds.map_batches(
            Prepare,
            fn_constructor_kwargs={"spec": self.spec},
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=p.decoders),
            num_cpus=1,
        )
        return ds.map_batches(
            Screen,
            fn_constructor_kwargs={"spec": self.spec},
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=p.actors),
            num_gpus=p.gpus_per_actor or None,
            num_cpus=p.cpus_per_actor,
        )


class Answered:
    """The Screen actors' answers as a ``ports.Screening`` for the runner: ``predict(paths)``
    yields, for each path, the answer its row came back with. A content known when it was
    prepared but gone from the database since (a reset?) has none: it fails, to be tried
    again."""

    def __init__(self, screening: RayScreening):
        self.ray = screening
        self.batch_size = screening.batch_size
        self.workers = 1  # the actors hashed every file: the runner has none to hash
        self.held: dict[Path, Answer] = {}

    @property
    def model(self) -> Any:
        return self.ray.model

    @property
    def threshold(self) -> float:
        return self.ray.threshold

    @property
    def device_name(self) -> str:
        return self.ray.device_name

    def warm_up(self) -> None:
        """The actors warm their own predictors."""

    def predict(self, paths: Iterable[Path | str]) -> Iterator[Answer]:
        for path in paths:
            answer = self.held.pop(Path(path), None)
            gone = TransientError("its earlier result is no longer in the database")
            yield answer or Failure(Path(path), gone)


class RayScanner(ScanRun):
    """Screens ``files`` into ``store`` on Ray; ``run()`` until done, ``stop()`` from a signal.

    The same interface and counts as ``worker.scan.Scanner``, so ``xray-worker scan`` drives
    either engine: the driver is a source of the runner (``worker/pipeline/runner.py``) whose
    chunks are the batches coming back from the actors, already hashed, decoded and judged;
    the runner settles, decides and commits them as it does the local engine's.
    """

    def __init__(self, *, files: Iterable[FoundFile], screening: RayScreening, **run: Any):
        super().__init__(screening=screening, **run)  # store, worker_host, limit, progress, ...
        self.files = iter(files)
        self.screening = screening
        self.answered = Answered(screening)
        self.runner = Runner(
            screening=self.answered,
            committer=self.committer,
            source=self,
            commit_size=screening.batch_size,
            sinks=self.sinks,
            middleware=[self.observer],
            stop=self._stop,
        )

    def run(self) -> Counts:
        model = self.screening.model
        log.info(
            "scanning with %s (%s) on Ray: %s", model.name, model.sha256[:12], self.screening.pool.describe()
        )
        work = self._plan()
        if not work or self.stopping:
            return self.counts
        log.info("%d files to read, in %d blocks", self._planned, len(work))
        from ray.exceptions import RayError

        batches = self.screening.dataset(work).iter_batches(batch_size=None, batch_format="numpy")
        try:
            self.screen(batches)
        except RayError as exc:
            if not self.stopping:
                text = str(exc).strip().splitlines() or [repr(exc)]
                raise ClusterError(f"the Ray cluster failed: {text[0]}") from exc
            # else Ctrl-C reached Ray's processes too: what was committed stays
        finally:
            self.runner.close()
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        return self.counts

    def screen(self, batches: Iterable[Batch]) -> None:
        """Settle, decide and commit the actors' batches (the runner), until they end or ``stop()``."""
        self.runner.run(self._chunks(batches))

    def _chunks(self, batches: Iterable[Batch]) -> Iterator[list[Item]]:
        """Each batch from the Screen actors as items: hashed, decided where a stage decided
        them, the model's answer held for the rest. When the runner takes the next batch it
        has taken every answer of this one it needs (the others were duplicates)."""
        for batch in batches:
            self.answered.held.clear()
            rows = [_Row(batch, i) for i in range(len(batch["path"]))]
            for row in rows:
                if row.answer is not None:
                    self.answered.held[row.item.path] = row.answer
            if rows:
                self.screening.device_name = str(batch["device"][0])  # which device screened it
            yield [row.item for row in rows]
            if self.stopping:
                return

    # -- planning -------------------------------------------------------------------------

    def _plan(self) -> list[Any]:
        """The new and changed files as Arrow tables of ``block_files`` rows."""
        import pyarrow as pa

        blocks = []
        for block in chunks(self._fresh(), self.screening.block_files):
            blocks.append(
                pa.table(
                    {
                        # Bytes, not text: Arrow strings must be UTF-8, a share's names need not be.
                        "path": pa.array([os.fsencode(f.path) for f in block], pa.binary()),
                        "size": pa.array([f.size for f in block], pa.int64()),
                        "mtime_ns": pa.array([f.mtime_ns for f in block], pa.int64()),
                    }
                )
            )
        return blocks

    def _fresh(self) -> Iterator[FoundFile]:
        """The walk less what the skip index says is unchanged, up to the limit."""
        for found in chunks(self.files, INDEX_CHUNK):
            if self.stopping or self.at_limit:
                return
            yield from self.fresh(found)


class _Row:
    """One row of a batch from the Screen actors: its item, and the model's answer if it has one."""

    def __init__(self, batch: Batch, i: int):
        path = Path(os.fsdecode(batch["path"][i]))
        self.item = scan_item(FoundFile(path, int(batch["size"][i]), int(batch["mtime_ns"][i])))
        self.item.started_at = _utc(batch["started_at"][i])
        self.item.sha256 = str(batch["sha256"][i]) or None
        self.item.size = int(batch["file_size"][i]) if batch["file_size"][i] >= 0 else None
        outcome, reason = str(batch["outcome"][i]), str(batch["reason"][i])
        self.answer: Prediction | None = None
        if outcome == Outcome.FAILED.value:
            self.item.fail(reason, retry=bool(batch["retry"][i]))
        elif outcome == Outcome.OUT_OF_SCOPE.value:
            self.item.refuse(reason)
        elif not batch["known"][i]:  # judged by the model
            self.answer = Prediction(
                path=path,
                label=str(batch["label"][i]),
                probabilities=json.loads(str(batch["probabilities"][i])),
                positive_probability=float(batch["positive_probability"][i]),
                decoded=decoded_from_facts(str(batch["facts"][i])),
                decode_ms=float(batch["decode_ms"][i]),
                infer_ms=float(batch["infer_ms"][i]),
                gate_score=None if np.isnan(batch["gate_score"][i]) else float(batch["gate_score"][i]),
            )
        if outcome:
            self.item.finished_at = _utc(batch["finished_at"][i])


def _utc(seconds: Any) -> datetime:
    return datetime.fromtimestamp(float(seconds), UTC)
