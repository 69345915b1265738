"""``bench/chaos.py``: the real daemon, SIGKILLed again and again, loses and duplicates nothing.

The slow tests run a smaller chaos run (60 files, 4 kills: one at a random moment and one at
each armed crash point) on SQLite and on PostgreSQL. The quick test shows the harness's
checker catches what it is there to catch.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from db_support import ENGINES, POSTGRES_URL, audit, result, sha

from worker.db import migrate
from worker.db.engine import make_engine
from worker.db.store import Store

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def load_chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos", CHAOS)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_checker_reports_lost_duplicated_and_misrecorded_files(tmp_path: Path):
    chaos = load_chaos()
    url = f"sqlite:///{tmp_path / 'results.db'}"
    engine = make_engine(url, create=True)
    migrate.upgrade(engine)
    site = chaos.Site(tmp_path, url, [], 8)
    day = site.processed / "NORMAL" / "2026-01-01"
    day.mkdir(parents=True)
    inputs = [chaos.Input(f"{c}.jpeg", sha(c), True) for c in ("a", "b")]
    for c in ("a", "b"):
        (day / f"{c}.jpeg").write_text(c)
    Store(engine).record_batch(
        [result("a"), result("b")],
        [
            audit(c, source_path=str(site.inbox / f"{c}.jpeg"), destination_path=str(day / f"{c}.jpeg"))
            for c in ("a", "b")
        ],
    )
    assert chaos.check(site, inputs) == ([], {"screened": 2})
    (day / "a-1.jpeg").write_text("a")  # filed twice
    (day / "b.jpeg").rename(site.inbox / "b.jpeg")  # never filed, though its row says so
    violations, _ = chaos.check(site, inputs)
    site.engine.dispose()
    engine.dispose()
    assert violations == [
        "left in the inbox: b.jpeg",
        f"unexpected file: ['{day / 'a-1.jpeg'}']",
        "b.jpeg: in 0 places []",
        f"audit row of b.jpeg points at a missing file: {day / 'b.jpeg'}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("db", ENGINES)
def test_sigkill_at_random_moments_and_at_crash_points_loses_nothing(tmp_path: Path, db: str):
    report_path = tmp_path / "report.json"
    args = [sys.executable, str(CHAOS), "--db", db, "--files", "60", "--kills", "4"]
    args += ["--json", str(report_path)]
    if db == "postgres":
        args += ["--pg-url", POSTGRES_URL]  # the run makes its own database there, and drops it
    run = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert report_path.exists(), run.stdout + run.stderr[-5000:]
    report = json.loads(report_path.read_text())
    assert report["violations"] == [] and run.returncode == 0, run.stdout + run.stderr[-5000:]
    hows = [kill["how"] for kill in report["kills"]]
    assert report["lives"] == 5 and len(hows) == 4
    for point in ("in-commit", "after-commit", "mid-move"):
        assert any(how.startswith(f"{point} #") for how in hows), hows  # the daemon died there itself
    assert any(how.startswith("outside") for how in hows)
    assert sorted(report["outcomes"]) == ["duplicate", "failed", "screened"]
    assert sum(report["outcomes"].values()) == report["inputs"] == 64 + len(load_chaos().AWKWARD)
