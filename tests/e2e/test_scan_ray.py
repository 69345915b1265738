"""``scan --engine ray``: the pool sizing, the two stages in-process, and the real command on
a local Ray instance against the local engine (same rows), stopped and resumed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from db_support import ENGINES
from fakes import CallbackSink
from sqlalchemy import create_engine, func, select

from worker.answers import Failure, Refusal
from worker.config import InferenceSettings, RaySettings
from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.schema import audit_events, results, scanned_files
from worker.db.store import Store
from worker.decode import DEFAULT_LIMITS
from worker.errors import ConfigError
from worker.model.predictor import Predictor
from worker.names import from_stored
from worker.scan.ray.driver import Pool, RayScanner, RayScreening, size_pool
from worker.scan.ray.stages import FAILED, OUT_OF_SCOPE, UNDECIDED, Prepare, Screen, StageSpec

pytest_plugins = ["db_fixtures"]
EXE = Path(sys.executable).with_name("xray-worker")
# Everything that says what was screened and how; ids and times differ by nature.
# Probabilities are compared within 1e-5 (batches differ), the rest exactly.
APART = (
    "id",
    "queued_at",
    "started_at",
    "finished_at",
    "inference_ms",
    "probabilities",
    "positive_probability",
    "gate_score",  # float arithmetic in batches of another size: compared within a tolerance
)
RESULT_COLUMNS = [c.name for c in results.columns if c.name not in APART]


# -- sizing the actor pools --------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "settings", "device", "expected"),
    [
        ({"CPU": 64, "GPU": 8}, RaySettings(), "auto", Pool(8, 1.0, 1.0, 56)),
        ({"CPU": 64, "GPU": 8}, RaySettings(gpus_per_actor=0.5), "auto", Pool(16, 0.5, 1.0, 48)),
        ({"CPU": 64, "GPU": 8}, RaySettings(actors=2, decoders=10), "auto", Pool(2, 1.0, 1.0, 10)),
        ({"CPU": 64, "GPU": 8}, RaySettings(), "cpu", Pool(1, 0.0, 1.0, 63)),  # told not to use GPUs
        ({"CPU": 2}, RaySettings(), "auto", Pool(1, 0.0, 1.0, 1)),  # a laptop
        ({"CPU": 2}, RaySettings(cpus_per_actor=4), "auto", Pool(1, 0.0, 4.0, 1)),  # never no decoder
        ({"CPU": 16, "GPU": 1}, RaySettings(gpus_per_actor=2), "auto", Pool(1, 2.0, 1.0, 15)),
    ],
)
def test_pools_are_sized_to_the_cluster(resources, settings, device, expected):
    assert size_pool(resources, settings, device) == expected


def test_without_ray_installed_the_message_says_how_to_install_it(monkeypatch):
    from worker.scan.ray.cluster import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[ray\]'"):
        import_ray()


# -- the stages, in this process ---------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_model():
    from worker.config import ModelSettings
    from worker.model.load import load

    m = ModelSettings()  # the shipped bundle
    return load(m.path, sha256=m.expected_sha256())


@pytest.fixture
def mixed_files(tmp_path: Path, full_res_dir: Path, dicom_dir: Path) -> list[Path]:
    """Real JPEGs and DICOMs (MONOCHROME1, JPEG 2000, JPEG-LS), a truncated JPEG and a text file."""
    root = tmp_path / "archive"
    root.mkdir()
    picked = sorted(full_res_dir.rglob("*.jpeg"))[:6] + sorted(dicom_dir.glob("*.dcm"))
    for f in picked:
        shutil.copy(f, root / f.name)
    (root / "cut.jpeg").write_bytes(picked[0].read_bytes()[:4000])
    (root / "notes.txt").write_text("not an x-ray\n")
    return sorted(root.iterdir())


def spec_for(model, db_url: str, batch_size: int = 8) -> StageSpec:
    return StageSpec(
        model_path=str(model.path),
        model_sha256=model.sha256,
        positive_class=model.positive_class,
        inference=InferenceSettings(device="cpu", batch_size=batch_size),
        limits=DEFAULT_LIMITS,
        database_url=db_url,
    )


def through_stages(spec: StageSpec, paths: list[Path]) -> dict[str, np.ndarray]:
    n = len(paths)
    batch = {
        "path": np.array([str(p) for p in paths]),
        "size": np.array([p.stat().st_size for p in paths]),
        "mtime_ns": np.array([p.stat().st_mtime_ns for p in paths]),
    }
    prepare = Prepare(spec)
    try:
        out = Screen(spec)(prepare(batch))
    finally:
        prepare.close()
    assert len(out["path"]) == n and "item" not in out  # tensors stay on the workers
    return out


def test_the_stages_label_like_the_local_predictor(shipped_model, mixed_files, tmp_path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    migrate.upgrade(make_engine(db, create=True))
    spec = spec_for(shipped_model, db)
    out = through_stages(spec, mixed_files)
    predictor = Predictor(shipped_model, InferenceSettings(device="cpu"), gate=spec.open_gate(shipped_model))
    local = {str(o.path): o for o in predictor.predict(mixed_files)}
    refused = 0
    for i, path in enumerate(out["path"]):
        expected = local[str(path)]
        if isinstance(expected, Failure):
            assert (out["outcome"][i], out["reason"][i]) == (FAILED, expected.reason), path
            assert not out["retry"][i]  # a bad file, not a bad moment
            continue
        if isinstance(expected, Refusal):  # the same gate, before or with inference
            assert (out["outcome"][i], out["reason"][i]) == (OUT_OF_SCOPE, expected.reason), path
            refused += 1
            continue
        assert out["outcome"][i] == UNDECIDED and out["label"][i] == expected.label, path
        probs = json.loads(out["probabilities"][i])
        assert probs.keys() == expected.probabilities.keys()
        assert max(abs(probs[k] - expected.probabilities[k]) for k in probs) < 1e-5
        assert out["sha256"][i] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
        facts = json.loads(out["facts"][i])
        assert (facts["format"], facts["width"], facts["height"]) == (
            expected.decoded.format,
            expected.decoded.width,
            expected.decoded.height,
        )
    assert sum(out["outcome"] == FAILED) == 2
    assert sum(out["outcome"] == UNDECIDED) == len(mixed_files) - 2 - refused and not any(out["known"])


def test_content_already_screened_is_not_decoded_and_settles_as_a_duplicate(
    shipped_model, mixed_files, tmp_path, store: Store
):
    """Prepare skips decoding what the database already has; the driver copies that verdict,
    and a twin within one batch is screened once."""
    db = store.engine.url.render_as_string(hide_password=False)
    jpegs = [p for p in mixed_files if p.suffix == ".jpeg" and p.name != "cut.jpeg"]
    twin = tmp_path / "twin.jpeg"
    shutil.copy(jpegs[1], twin)
    spec = spec_for(shipped_model, db)
    screening = RayScreening(shipped_model, spec, Pool(1, 0, 1, 1), block_files=8)

    committed: list = []
    ray_scanner = RayScanner(
        files=[], screening=screening, store=store, worker_host="test", sinks=[CallbackSink(committed.extend)]
    )

    first = through_stages(spec, [jpegs[0], jpegs[1], twin])
    ray_scanner.screen([first])  # the runner settles, decides and commits what the actors sent
    jobs = committed[:]
    assert screening.device_name == "cpu"
    assert [j.name for j in jobs] == [str(jpegs[0]), str(jpegs[1]), str(twin)]
    assert [j.outcome for j in jobs] == ["screened", "screened", "duplicate"]
    assert jobs[2].probabilities == jobs[1].probabilities

    again = through_stages(spec, [jpegs[0], jpegs[2]])
    assert list(again["known"]) == [True, False] and again["facts"][0] == ""
    committed.clear()
    ray_scanner.screen([again])
    jobs = committed[:]
    assert [j.name for j in jobs] == [str(jpegs[0]), str(jpegs[2])]
    assert [j.outcome for j in jobs] == ["duplicate", "screened"]
    assert jobs[0].label == first["label"][0] and jobs[0].positive_probability == pytest.approx(
        first["positive_probability"][0]
    )


def test_an_actor_refuses_a_model_file_that_is_not_the_drivers(shipped_model, tmp_path):
    from worker.errors import ModelError

    other = tmp_path / "bundle"  # another bundle at the node's path: its manifest changed
    shutil.copytree(shipped_model.path.parent, other)
    (other / "bundle.json").write_bytes((other / "bundle.json").read_bytes() + b"\n")
    spec = spec_for(SimpleNamespace(path=other, sha256=shipped_model.sha256, positive_class="PNEUMONIA"), "")
    with pytest.raises(ModelError, match="refusing to load it"):
        Screen(spec)


# -- the real command on a local Ray instance ----------------------------------------------


class Archive:
    """A few hundred real files, and databases built by the migrations."""

    def __init__(self, tmp_path: Path, data_dir: Path, files: int):
        self.tmp, self.root = tmp_path, tmp_path / "archive"
        small = sorted((data_dir / "chest_xray_224" / "train").rglob("*.jpeg"))
        picked = small[:: max(1, len(small) // (files - 40))][: files - 40]
        picked += sorted((data_dir / "chest_xray_full" / "val").rglob("*.jpeg"))
        picked += sorted((data_dir / "dicom").glob("*.dcm"))
        for i, f in enumerate(picked):
            dest = self.root / f"{i % 7:02d}" / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
        copies = self.root / "copies"  # the same content under other names
        copies.mkdir()
        for f in picked[:3]:
            shutil.copy2(f, copies / f"copy-{f.name}")
        for n, raw in enumerate([b"\xe9t\xe9 archive.jpeg", b"new\nline \x1b[31m.jpeg", b"\xff\xfe.jpeg"]):
            # names a share can hold but Arrow's strings cannot: the paths travel as bytes
            data = picked[n].read_bytes() + b"\nawkward %d\n" % n  # same pixels, another content
            (copies / os.fsdecode(raw)).write_bytes(data)
        (self.root / "cut.jpeg").write_bytes(picked[0].read_bytes()[:3000])
        (self.root / "readme.txt").write_text("export notes\n")
        self.count = sum(1 for p in self.root.rglob("*") if p.is_file())

    @staticmethod
    def database(url: str) -> str:
        engine = make_engine(url, create=True)
        migrate.upgrade(engine)
        engine.dispose()
        return url

    def scan(self, db: str, *extra: str, env: dict[str, str] | None = None, timeout: float = 600):
        args = [EXE, "--log-level", "INFO", "scan", self.root, "--db", db, *extra]
        return subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )

    def start(self, db: str, *extra: str, env: dict[str, str]) -> subprocess.Popen:
        args = [EXE, "--log-level", "INFO", "scan", self.root, "--db", db, *extra]
        with (self.tmp / "ray-scan.log").open("wb") as log:  # the child keeps its own descriptor
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})

    def snapshot(self) -> dict[str, tuple[str, int, int]]:
        return {
            str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }


def table_rows(url: str) -> dict[str, dict]:
    engine = create_engine(url)
    with engine.connect() as conn:
        out = {
            "results": {r.content_sha256: r._asdict() for r in conn.execute(select(results))},
            "audit": {r.source_path: r._asdict() for r in conn.execute(select(audit_events))},
            "index": {r.path: r._asdict() for r in conn.execute(select(scanned_files))},
        }
    engine.dispose()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ENGINES)
def test_ray_scan_writes_the_rows_the_local_engine_writes(
    engine_name: str, tmp_path: Path, data_dir: Path, request: pytest.FixtureRequest
):
    archive = Archive(tmp_path, data_dir, files=300)
    local_db = archive.database(f"sqlite:///{tmp_path / 'local.db'}")
    if engine_name == "sqlite":
        ray_db = archive.database(f"sqlite:///{tmp_path / 'ray.db'}")
    else:
        from db_fixtures import fresh_schema

        base = request.getfixturevalue("postgres_database")
        ray_db = archive.database(fresh_schema(base).render_as_string(hide_password=False))
    before = archive.snapshot()

    local = archive.scan(local_db)
    assert local.returncode == 0, local.stderr
    ray = archive.scan(ray_db, "--engine", "ray", env={"XRAY_SCREEN_RAY_BLOCK_FILES": "32"})
    assert ray.returncode == 0, ray.stderr
    assert "on Ray: 1 inference actor(s) (1 CPU each), 1 decoding actor(s)" in ray.stderr
    assert "scan done after" in ray.stderr and f"{archive.count} files read" in ray.stderr

    a, b = table_rows(local_db), table_rows(ray_db)
    refused = sum(x["outcome"] == "out_of_scope" for x in a["audit"].values())  # the gate's: no result
    assert len(a["results"]) == archive.count - 3 - 2 - refused  # 3 copies, 2 undecodable
    assert a["results"].keys() == b["results"].keys()
    for sha, x in a["results"].items():
        y = b["results"][sha]
        assert {c: x[c] for c in RESULT_COLUMNS} == {c: y[c] for c in RESULT_COLUMNS}, sha
        assert abs(x["positive_probability"] - y["positive_probability"]) < 1e-5
        assert abs(x["gate_score"] - y["gate_score"]) < 1e-3 * x["gate_score"]
        assert max(abs(x["probabilities"][k] - y["probabilities"][k]) for k in x["probabilities"]) < 1e-5
    assert a["audit"].keys() == b["audit"].keys() and len(a["audit"]) == archive.count
    for path, x in a["audit"].items():
        y = b["audit"][path]
        same = ("outcome", "reason", "content_sha256", "file_size", "destination_path", "worker_id")
        assert {c: x[c] for c in same} == {c: y[c] for c in same}, path
        assert (x["result_id"] is None) == (y["result_id"] is None)
    for path, x in a["index"].items():
        y = b["index"][path]
        assert (x["size"], x["mtime_ns"], x["outcome"], x["content_sha256"]) == (
            y["size"],
            y["mtime_ns"],
            y["outcome"],
            y["content_sha256"],
        )
    assert a["index"].keys() == b["index"].keys()

    again = archive.scan(ray_db, "--engine", "ray")  # incremental: nothing new, nothing read
    assert again.returncode == 0, again.stderr
    assert f"{archive.count} skipped" in again.stderr and "0 screened" in again.stderr
    assert archive.snapshot() == before  # read-only: contents, mtimes and modes untouched
    assert len(table_rows(ray_db)["audit"]) == archive.count


@pytest.mark.slow
def test_a_ray_scan_stopped_mid_run_resumes_where_it_committed(tmp_path: Path, data_dir: Path):
    archive = Archive(tmp_path, data_dir, files=240)
    db = archive.database(f"sqlite:///{tmp_path / 'ray.db'}")
    engine = create_engine(db)
    small_blocks = {"XRAY_SCREEN_RAY_BLOCK_FILES": "8", "XRAY_SCREEN_INFERENCE_BATCH_SIZE": "8"}
    proc = archive.start(db, "--engine", "ray", env=small_blocks)

    def audited() -> int:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(audit_events)).scalar_one()

    deadline = time.monotonic() + 300
    while audited() == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130, (tmp_path / "ray-scan.log").read_text()[-3000:]
    first = audited()
    assert 0 < first < archive.count, "stopped too late to test anything"

    rest = archive.scan(db, "--engine", "ray")
    assert rest.returncode == 0, rest.stderr
    assert f"{first} skipped" in rest.stderr
    with engine.connect() as conn:
        a = audit_events.c
        paths = [from_stored(r[0], r[1]) for r in conn.execute(select(a.source_path, a.source_path_hex))]
    assert sorted(paths) == sorted(str(p) for p in archive.root.rglob("*") if p.is_file())  # once each
    engine.dispose()


def test_an_unreachable_cluster_exits_75_at_once(tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    Archive.database(db)
    (tmp_path / "archive").mkdir()
    start = time.monotonic()
    proc = subprocess.run(
        [EXE, "scan", tmp_path / "archive", "--db", db, "--engine", "ray", "--ray-address", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 75, proc.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in proc.stderr
    assert time.monotonic() - start < 60  # not Ray's minutes of retries


@pytest.mark.slow
def test_ray_address_joins_a_running_cluster(tmp_path: Path, data_dir: Path):
    """`ray start --head` as an operator would, then `scan --ray-address` to it."""
    ray_exe = Path(sys.executable).with_name("ray")
    port = 6390 + os.getpid() % 500
    head = [ray_exe, "start", "--head", "--port", str(port), "--num-cpus", "2"]
    head += ["--include-dashboard", "false", "--disable-usage-stats"]
    subprocess.run(head, check=True, capture_output=True, timeout=120)
    try:
        archive = Archive(tmp_path, data_dir, files=60)
        db = archive.database(f"sqlite:///{tmp_path / 'ray.db'}")
        done = archive.scan(db, "--engine", "ray", "--ray-address", f"127.0.0.1:{port}")
        assert done.returncode == 0, done.stderr
        assert "Ray: 127.0.0.1:" in done.stderr and f"{archive.count} files read" in done.stderr
        assert len(table_rows(db)["audit"]) == archive.count
    finally:
        subprocess.run([ray_exe, "stop", "--force"], capture_output=True, timeout=120)
