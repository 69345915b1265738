"""The README's runnable shell blocks, run as a new user would, so the README cannot drift.

A block preceded by an HTML comment starting ``<!-- runnable`` (an indented or a fenced
block) is run with bash, in order, in one scratch "checkout": a temporary folder holding a
copy of ``config.toml`` (so ``var/`` and the database land there, not in this checkout), the
samples, links to ``models/`` and to this environment's ``bin/`` as ``.venv/bin``. The first
command's install (``python3 -m venv .venv && .venv/bin/pip install ...``) is skipped: the
test uses the environment it runs in. Each block runs in a session of its own, killed at the
end, so a daemon a block leaves behind is stopped.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARK = "<!-- runnable"
INSTALL = re.compile(r"^(python3? -m venv\b|\S*pip install\b)")
BLOCK_TIMEOUT = 240  # seconds; each block takes well under a minute

pytestmark = pytest.mark.slow


def runnable_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, shell text) of each block right after a ``<!-- runnable`` comment."""
    lines = text.splitlines()
    blocks = []
    for number, line in enumerate(lines, 1):
        if not line.lstrip().startswith(MARK):
            continue
        i = number  # the line after the mark (0-based index)
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i < len(lines) and lines[i].startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            body = lines[i + 1 : end]
        elif i < len(lines) and lines[i].startswith("    "):
            body = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
        else:
            raise AssertionError(f"README.md:{number}: {MARK} is not followed by a code block")
        blocks.append((number, "\n".join(body).strip() + "\n"))
    return blocks


def without_install(block: str) -> str:
    """The block less its install steps (``python3 -m venv``, ``pip install``)."""
    kept = []
    for line in block.splitlines():
        steps = [step for step in line.split(" && ") if not INSTALL.match(step.strip())]
        if steps:
            kept.append(" && ".join(steps))
    return "\n".join(kept) + "\n"


def scratch_checkout(root: Path) -> Path:
    """What the README's commands touch, in ``root``: settings, samples, model, ``.venv/bin``."""
    site = root / "checkout"
    site.mkdir()
    shutil.copy(ROOT / "config.toml", site / "config.toml")  # relative paths: below site/
    shutil.copytree(ROOT / "samples", site / "samples")
    (site / "models").symlink_to(ROOT / "models")
    (site / ".venv").mkdir()
    (site / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
    return site


def run_block(block: str, site: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", block],
        cwd=site,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: whatever it started is killed below
    )
    try:
        out, _ = proc.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {BLOCK_TIMEOUT} s:\n{block}\n{out[-4000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a daemon left in the background
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def test_the_readme_opens_with_the_main_job_and_marks_its_tour_runnable():
    text = README.read_text(encoding="utf-8")
    blocks = runnable_blocks(text)
    first_line, first = blocks[0]
    assert first_line <= 40 and "pip install -e '.[lean]'" in first  # the lean install: no torch
    assert first.strip().endswith("xray-worker scan samples/ && .venv/bin/xray-worker report --brief")
    # The second command runs the tests, and is what CI runs (.ci/run), to the letter.
    opening = text[: text.index("## A tour")].splitlines()
    commands = [line[4:] for line in opening if line.startswith("    ") and line.strip()]
    assert commands[1] == "./scripts/test"
    assert commands[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    tour = "".join(block for _, block in blocks[1:])
    assert "xray-worker watch" in tour and "sqlite3" in tour and "xray-worker healthcheck" in tour
    assert (
        without_install(first)
        == ".venv/bin/xray-worker scan samples/ && .venv/bin/xray-worker report --brief\n"
    )


def test_the_readme_runnable_blocks_run(tmp_path: Path):
    if shutil.which("sqlite3") is None:
        pytest.fail("the README's SQL step needs the sqlite3 command (apt-get install sqlite3)")
    site = scratch_checkout(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRAY_SCREEN_")}
    env["XRAY_SCREEN_CONFIG"] = str(site / "config.toml")
    outputs = []
    for number, block in runnable_blocks(README.read_text(encoding="utf-8")):
        result = run_block(without_install(block), site, env)
        assert result.returncode == 0, (
            f"README.md:{number} exited {result.returncode}:\n{block}\n{result.stdout}"
        )
        outputs.append(result.stdout)
    first, watch, sql, check = outputs

    database = site / "var" / "xray-screen.db"
    assert f"created the results database {database.resolve()} at schema" in first
    assert "scan done after" in first and "6 files read" in first and "4 screened, 2 positive" in first
    assert "2 out of scope (the gate: not for this model to judge)" in first  # the two adult DICOMs
    assert "New results            4   positive 2 (50.0%)" in first
    assert "The results are in the SQLite file var/xray-screen.db" in first
    assert "sqlite3 -readonly -box var/xray-screen.db" in first

    # (whether "the inbox ... is empty" comes before the files depends on how fast the model
    # loads here: tests/e2e/test_first_use.py waits for it)
    assert "stopped: 0 screened, 4 duplicates, 2 out of scope, 0 failed" in watch, watch
    filed = sorted(p.name for p in (site / "var" / "processed").rglob("*") if p.is_file())
    assert filed == sorted(p.name for p in (ROOT / "samples").iterdir())

    assert "scan" in sql and "duplicate" in sql and "PNEUMONIA" in sql
    # report_flagged has a row per file: each positive twice, its result_id saying it is one result
    flagged = [line.split("│")[1:4] for line in sql.splitlines() if "PNEUMONIA" in line]
    ids = [cells[0].strip() for cells in flagged]
    assert len(flagged) == 4 and all(ids.count(i) == 2 for i in ids), sql
    assert check.count("ok    ") == 6 and "FAIL" not in check

    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM results").fetchone() == (4,)
        outcomes = dict(
            conn.execute("SELECT outcome, count(*) FROM audit_events GROUP BY outcome").fetchall()
        )
    assert outcomes == {"screened": 4, "duplicate": 4, "out_of_scope": 4}
