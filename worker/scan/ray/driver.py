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

import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from worker.answers import Prediction
from worker.db.store import chunks
from worker.errors import ClusterError
from worker.pipeline.counts import Counts
from worker.pipeline.item import Item
from worker.scan.ray.stages import FAILED, READY, REFUSED, Prepare, Screen, StageSpec, decoded_from_facts
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


class RayScanner(ScanRun):
    """Screens ``files`` into ``store`` on Ray; ``run()`` until done, ``stop()`` from a signal.

    The same interface and counts as ``worker.scan.Scanner``, so ``xray-worker scan`` drives
    either engine.
    """

    def __init__(self, *, files: Iterable[FoundFile], screening: RayScreening, **run: Any):
        super().__init__(screening=screening, **run)  # store, worker_host, limit, progress, ...
        self.files = iter(files)
        self.screening = screening

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
        with ThreadPoolExecutor(1, thread_name_prefix="commit") as commits:
            committing: Future[None] | None = None
            try:
                for batch in batches:
                    if committing is not None:
                        committing.result()  # one commit at a time, in order; its error is raised here
                    items, device = self._settle(batch)
                    committing = commits.submit(self._commit, items, device)
                    if self.stopping:
                        break
            except RayError as exc:
                if not self.stopping:
                    text = str(exc).strip().splitlines() or [repr(exc)]
                    raise ClusterError(f"the Ray cluster failed: {text[0]}") from exc
                # else Ctrl-C reached Ray's processes too: what was committed stays
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()
                if committing is not None:
                    committing.result()
        return self.counts

    def _commit(self, items: list[Item], device: str) -> None:
        """In the commit thread, so the driver waits for the next batch meanwhile."""
        self.screening.device_name = device  # commits are one at a time: this batch's device
        self.commit(items)

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
        model_sha = self.screening.model.sha256
        for chunk in chunks(self.files, INDEX_CHUNK):
            if self.stopping:
                return
            paths = [str(f.path) for f in chunk]
            stamps = self.committer.retrying(lambda paths=paths: self.store.scan_index(paths, model_sha))
            for found in chunk:
                stamp = stamps.get(str(found.path))
                if stamp is not None and (stamp.size, stamp.mtime_ns) == (found.size, found.mtime_ns):
                    self.counts.skipped += 1
                elif self.at_limit:
                    return
                else:
                    self._planned += 1
                    yield found
            if self.progress:
                self.progress.update(self.counts)

    # -- settling what comes back ---------------------------------------------------------

    def _settle(self, batch: dict[str, np.ndarray]) -> tuple[list[Item], str]:
        """One batch from the Screen actors -> decided items, in the batch's order, duplicates
        settled on the way (``ScanRun.settle``: against the database, the contents still in
        flight, and this batch), and the device that screened it."""
        rows = {}
        for i in range(len(batch["path"])):
            row = _Row(batch, i)
            rows[row.item] = row
        to_screen, _ = self.settle(list(rows))
        positive_class = self.screening.model.positive_class
        for item in to_screen:
            row = rows[item]
            if row.status == READY:
                self.settler.decide(item, row.prediction(), positive_class)
                item.finished_at = row.finished_at
            else:  # known when it was prepared, gone now (the database was reset?)
                self.settler.fail(item, "its earlier result is no longer in the database", retry=True)
        device = str(batch["device"][0]) if rows else self.screening.device_name
        return list(rows), device


class _Row:
    """One row of a batch from the Screen actors."""

    def __init__(self, batch: dict[str, np.ndarray], i: int):
        self.batch, self.i = batch, i
        self.path = os.fsdecode(batch["path"][i])
        self.status = str(batch["status"][i])
        self.finished_at = _utc(batch["finished_at"][i])
        found = FoundFile(Path(self.path), int(batch["size"][i]), int(batch["mtime_ns"][i]))
        self.item = scan_item(found)
        self.item.started_at = _utc(batch["started_at"][i])
        self.item.sha256 = str(batch["sha256"][i]) or None
        self.item.size = int(batch["file_size"][i]) if batch["file_size"][i] >= 0 else None
        if self.status == FAILED:
            self.item.fail(str(batch["reason"][i]), retry=bool(batch["retry"][i]))
        elif self.status == REFUSED:
            self.item.refuse(str(batch["reason"][i]))

    def prediction(self) -> Prediction:
        import json

        b, i = self.batch, self.i
        return Prediction(
            path=Path(self.path),
            label=str(b["label"][i]),
            probabilities=json.loads(str(b["probabilities"][i])),
            positive_probability=float(b["positive_probability"][i]),
            decoded=decoded_from_facts(str(b["facts"][i])),
            decode_ms=float(b["decode_ms"][i]),
            infer_ms=float(b["infer_ms"][i]),
            gate_score=None if np.isnan(b["gate_score"][i]) else float(b["gate_score"][i]),
        )


def _utc(seconds: Any) -> datetime:
    return datetime.fromtimestamp(float(seconds), UTC)
