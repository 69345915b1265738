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

from worker.db.store import StoredResult, chunks
from worker.errors import ClusterError
from worker.model.predictor import Prediction
from worker.scan.commit import ScanJob, ScanRun
from worker.scan.progress import ScanCounts
from worker.scan.ray.stages import FAILED, READY, Prepare, Screen, StageSpec, decoded_from_facts
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
        self._in_flight: dict[str, ScanJob] = {}  # screened in the batch being committed, by content

    def run(self) -> ScanCounts:
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
                    jobs, device = self._settle(batch)
                    if committing is not None:
                        committing.result()  # one commit at a time, in order; its error is raised here
                    self._in_flight = {j.sha256: j for j in jobs if j.outcome == "screened" and j.sha256}
                    committing = commits.submit(self._commit, jobs, device)
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

    def _commit(self, jobs: list[ScanJob], device: str) -> None:
        """In the commit thread, so the driver settles the next batch meanwhile."""
        self.screening.device_name = device  # commits are one at a time: this batch's device
        self.committer.commit(jobs)

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

    def _settle(self, batch: dict[str, np.ndarray]) -> tuple[list[ScanJob], str]:
        """One batch from the Screen actors -> decided jobs, duplicates settled on the way
        (against the database, the batch being committed, and this batch), and the device
        that screened it."""
        rows = [_Row(batch, i) for i in range(len(batch["path"]))]
        shas = {r.sha256 for r in rows if r.sha256 and r.status != FAILED}
        model = self.screening.model
        known: dict[str, StoredResult] = (
            self.committer.retrying(lambda: self.store.known_results(shas, model.sha256)) if shas else {}
        )
        first: dict[str, ScanJob] = dict(self._in_flight)
        jobs = []
        for row in rows:
            job = row.job()
            if row.status == FAILED:
                job.fail(row.reason, retry_next_run=row.retry)
            elif row.sha256 in known:
                job.copy_stored(known[row.sha256])
            elif row.sha256 in first:
                job.copy_verdict(first[row.sha256])
            elif row.status == READY:
                job.decide(row.prediction(), model.positive_class)
                job.finished_at = row.finished_at
                first[row.sha256] = job
            else:  # known when it was prepared, gone now (the database was reset?)
                job.fail("its earlier result is no longer in the database", retry_next_run=True)
            jobs.append(job)
        return jobs, str(batch["device"][0]) if len(rows) else self.screening.device_name


class _Row:
    """One row of a batch from the Screen actors."""

    def __init__(self, batch: dict[str, np.ndarray], i: int):
        self.batch, self.i = batch, i
        self.path = os.fsdecode(batch["path"][i])
        self.sha256 = str(batch["sha256"][i])
        self.status = str(batch["status"][i])
        self.reason = str(batch["reason"][i])
        self.retry = bool(batch["retry"][i])
        self.finished_at = _utc(batch["finished_at"][i])

    def job(self) -> ScanJob:
        b, i = self.batch, self.i
        found = FoundFile(Path(self.path), int(b["size"][i]), int(b["mtime_ns"][i]))
        job = ScanJob(found, started_at=_utc(b["started_at"][i]))
        job.sha256 = self.sha256 or None
        job.size = int(b["file_size"][i]) if b["file_size"][i] >= 0 else None
        return job

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
        )


def _utc(seconds: Any) -> datetime:
    return datetime.fromtimestamp(float(seconds), UTC)
