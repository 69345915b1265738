"""The decoder fuzzing harness (bench/fuzz_decoder.py), short enough for every test run."""

from __future__ import annotations

import importlib.util
import os
import random
import re
import subprocess
import sys
from pathlib import Path

from worker.errors import DecodeError

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "bench" / "fuzz_decoder.py"


def _load_harness():
    spec = importlib.util.spec_from_file_location("fuzz_decoder", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_thousand_mutated_files_raise_only_decode_errors(tmp_path: Path, data_dir: Path):
    """The same command as the 100,000-run, with the deterministic engine and a fixed seed."""
    run = subprocess.run(
        [sys.executable, HARNESS, "--engine", "random", "--runs", "2000", "--seed", "7", "--out", tmp_path],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "XRAY_SCREEN_DATA": str(data_dir)},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "engine random, seed 7: 2000 executions" in run.stdout
    assert "findings: 0 (0 kinds)" in run.stdout
    decoded, refused = map(int, re.search(r"outcomes: decoded (\d+), refused (\d+)\n", run.stdout).groups())
    assert decoded >= 100 and decoded + refused == 2000  # both ways out are exercised, and nothing else
    assert list((tmp_path / "findings").iterdir()) == []


def test_an_escaping_exception_is_saved_as_a_finding(tmp_path: Path):
    fuzz = _load_harness()
    harness = fuzz.Harness(tmp_path, timeout=10, rss_limit_mb=100_000)
    try:

        def broken_decoder(path: Path, **kwargs):
            if path.read_bytes().startswith(b"boom"):
                raise TypeError("a decoder bug")
            raise DecodeError("refused")

        harness.decode_file = broken_decoder
        assert harness.execute(b"fine") == "refused"
        assert harness.execute(b"boom 1") == "finding"
        assert harness.execute(b"boom 2") == "finding"
    finally:
        harness.close()
    [saved] = (tmp_path / "findings").glob("*.bin")
    assert saved.name.startswith("TypeError-") and saved.read_bytes() == b"boom 1"  # one file per kind
    assert "a decoder bug" in saved.with_suffix(".txt").read_text()
    report = harness.report("test", 0)
    assert "findings: 2 (1 kinds)" in report and "2 x TypeError at test_fuzz_decoder.py" in report


def test_mutations_are_reproducible_from_the_seed():
    fuzz = _load_harness()
    seeds = [bytes(range(256)) * 8, b"\x89PNG\r\n\x1a\n" + bytes(64) + b"IHDR" + bytes(40)]
    mutator = fuzz.Mutator(seeds)
    first = [mutator.mutate(random.Random(3), s) for s in seeds * 20]
    again = [mutator.mutate(random.Random(3), s) for s in seeds * 20]
    assert first == again and sum(a != b for a, b in zip(first, seeds * 20, strict=True)) >= 30
