"""The pipeline's seams hold: each real part, and each stand-in the unit tier runs on, has
the members of its protocol (``worker/pipeline/ports.py``). ``isinstance`` on a
``runtime_checkable`` protocol checks the names, so a member renamed or dropped on either
side fails here (the learner's ``LoadedModel`` and the real ``Predictor``, which need torch:
tests/integration/test_scan.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from fakes import FakeModel, FakePredictor, MemoryStore

from worker.config import InferenceSettings
from worker.db.engine import make_engine
from worker.db.store import Store
from worker.model.bundle import BundleModel
from worker.model.preprocess import Preprocessing
from worker.pipeline import ports
from worker.scan.ray.driver import Pool, RayScreening


def bundle_model() -> BundleModel:
    preprocessing = Preprocessing(
        image_mode="L", min_side=448, resize=(224, 224), resize_method="squish", normalize=None
    )
    return BundleModel(
        path=Path("models/x/bundle.json"),
        sha256="0" * 64,
        manifest={"variant": "fp32"},
        vocab=["NORMAL", "PNEUMONIA"],
        positive_index=1,
        preprocessing=preprocessing,
        metadata={"threshold": 0.5},
        network=Path("models/x/model.onnx"),
    )


def test_the_stores_are_stores(tmp_path: Path):
    real = Store(make_engine(f"sqlite:///{tmp_path / 'results.db'}", create=True))
    try:
        assert isinstance(real, ports.Store)
    finally:
        real.close()
    assert isinstance(MemoryStore(), ports.Store)


def test_a_bundle_and_the_fake_are_models():
    assert isinstance(bundle_model(), ports.Model)
    assert isinstance(FakeModel(), ports.Model)


def test_the_fake_predictor_screens_and_the_ray_engine_records_provenance():
    assert isinstance(FakePredictor(), ports.Screening)
    spec = SimpleNamespace(inference=InferenceSettings(batch_size=8))
    ray = RayScreening(bundle_model(), spec, Pool(1, 0.0, 1.0, 1), block_files=64)  # type: ignore[arg-type]
    assert isinstance(ray, ports.Provenance)
    assert not isinstance(ray, ports.Screening)  # it predicts through Ray actors, not predict()


@pytest.mark.parametrize(
    ("part", "protocol"),
    [(object(), ports.Store), (FakePredictor(), ports.Model), (FakeModel(), ports.Screening)],
)
def test_a_part_without_the_members_is_not_one(part: object, protocol: type):
    assert not isinstance(part, protocol)


def test_the_sources_and_sinks_plug_into_the_runner(tmp_path: Path):
    """The inbox daemon, the archive walk and the Ray driver are sources; the --output file and
    the tests' probe are sinks; the Ray driver's answers are a screening (tests/unit/test_pipeline.py
    runs them)."""
    from fakes import CallbackSink

    from worker.daemon import Daemon
    from worker.scan.ray.driver import Answered, RayScanner
    from worker.scan.run import ScanRun
    from worker.sinks.results_file import ResultsFile

    for source in (Daemon, ScanRun, RayScanner):
        assert issubclass(source, ports.Source), source  # runtime protocols: members by name
    out = ResultsFile(tmp_path / "out.csv", ["NORMAL", "PNEUMONIA"])
    try:
        assert isinstance(out, ports.Sink) and isinstance(CallbackSink(print), ports.Sink)
    finally:
        out.close()
    spec = SimpleNamespace(inference=InferenceSettings(batch_size=8))
    ray = RayScreening(bundle_model(), spec, Pool(1, 0.0, 1.0, 1), block_files=64)  # type: ignore[arg-type]
    assert isinstance(Answered(ray), ports.Screening)


def test_the_shipped_bundles_engine_is_an_engine():
    """The ONNX engine (the lean install's); the torch one: tests/integration/test_scan.py."""
    from worker.config import DEFAULT_BUNDLE, SHIPPED_BUNDLE_SHA256
    from worker.model.load import load
    from worker.model.predictor import Predictor

    bundle = load(DEFAULT_BUNDLE, sha256=SHIPPED_BUNDLE_SHA256)
    predictor = Predictor(bundle, InferenceSettings(device="cpu"))
    assert isinstance(predictor.engine, ports.Engine) and predictor.runtime == "onnx"
    assert isinstance(predictor.model, ports.Model)
