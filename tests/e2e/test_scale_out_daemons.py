"""Many daemons, one inbox: three real ``xray-worker watch`` processes on one inbox and one
PostgreSQL database, files arriving while they run, one of them SIGKILLed while it holds
claimed files.

Every file must be screened exactly once and filed exactly once, the work must be shared,
the dead worker's claims must be finished by the others once its lease has run out, and
``xray-worker report`` must show each worker's part as the audit trail has it.
"""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_harness import Site, wait_for
from sqlalchemy import URL

from worker.db.schema import results
from worker.pipeline.hashing import sha256_file
from worker.runtime.lease import beat_interval
from worker.sources.claim import WORK_DIR

pytest_plugins = ["db_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LEASE = 10  # seconds: the smallest the settings allow
DISTINCT, COPIES, BROKEN = 296, 2, 2
WORKERS = ("a", "b", "c")
VICTIM = "c"
ADOPTED = re.compile(r"adopted (\d+) files from worker (\S+)")


@pytest.fixture
def inputs(tmp_path: Path, full_res_dir: Path) -> list[Path]:
    """300 files, shuffled: 296 distinct real X-rays, 2 byte-for-byte copies, 2 truncated."""
    originals = sorted(full_res_dir.rglob("*.jpeg"))[:DISTINCT]
    staging = tmp_path / "staging"
    staging.mkdir()
    files = []
    for i, src in enumerate(originals):
        files.append(staging / f"{i:03d}-{src.name}")
        shutil.copy(src, files[-1])
    for i in range(COPIES):
        files.append(staging / f"copy-{i}.jpeg")
        shutil.copy(originals[i * 7], files[-1])
    for i in range(BROKEN):
        files.append(staging / f"broken-{i}.jpeg")
        files[-1].write_bytes(originals[i].read_bytes()[:4000])
    assert len({sha256_file(f)[0] for f in files}) == DISTINCT + BROKEN  # distinct contents
    order = sorted(files, key=lambda f: sha256_file(f)[0] + f.name)  # a fixed shuffle
    return order


@pytest.fixture
def site(tmp_path: Path, trained_model: Path, postgres_schema: URL):
    made = Site(tmp_path, postgres_schema.render_as_string(hide_password=False), trained_model)
    yield made
    made.close()


def test_three_daemons_share_an_inbox_and_finish_a_killed_ones_claims(site: Site, inputs: list[Path]):
    began = time.monotonic()
    common = ("--polling", "--set", f"inbox.lease_seconds={LEASE}")
    small_steps = ("--batch-size", "4", "--set", "inbox.poll_interval=0.5")
    # The victim looks more often, and gathers what it claims into batches of up to 64 files
    # for 2 s: it soon holds claimed, unfinished files most of the time, so the kill finds some.
    gathers = ("--batch-size", "64", "--set", "inbox.max_wait_ms=2000", "--set", "inbox.poll_interval=0.2")
    procs = {w: site.spawn(w, *common, *(gathers if w == VICTIM else small_steps)) for w in WORKERS}
    for w in WORKERS:
        site.wait_ready(w)
    ready = time.monotonic()

    def victim_busy() -> bool:
        return "batch:" in site.log(VICTIM) and len(site.claimed(VICTIM)) >= 2

    # Files arrive 10 every half second (20/s); the victim is killed as soon as it holds
    # claims after a batch, and the rest keep arriving while its lease runs out.
    killed_at, held, dropped, waves = None, [], 0, [inputs[i : i + 10] for i in range(0, len(inputs), 10)]
    for wave in waves:
        site.drop(wave)
        next_wave = time.monotonic() + 0.5
        while time.monotonic() < next_wave:
            if killed_at is None and victim_busy():
                site.kill(procs[VICTIM])
                killed_at = datetime.now(UTC)
                held = sorted(p.name.partition("~")[2] for p in site.claimed(VICTIM))
                dropped = sum(len(w) for w in waves[: waves.index(wave) + 1])
            time.sleep(0.02)
    assert killed_at is not None, f"{VICTIM} never held claims after a batch:\n{site.log(VICTIM)[-3000:]}"
    assert held, "the victim died holding nothing"

    wait_for(lambda: len(site.filed()) == len(inputs), 120, "not all filed:\n" + site.log("a")[-3000:])
    finished = time.monotonic()
    assert [site.stop(procs[w]) for w in WORKERS if w != VICTIM] == [0, 0]

    # Filed exactly once, nothing left behind.
    assert site.waiting() == [] and site.claimed() == []
    assert sorted(p.name for p in site.filed()) == sorted(f.name for f in inputs)  # no name-1 copies
    assert sorted(p.name for p in site.inbox.iterdir()) == [WORK_DIR]

    # Screened exactly once: one audit row per file, one result per content.
    rows = site.audit_rows()
    by_name = {Path(r.source_path).name: r for r in rows}
    assert len(rows) == len(inputs) and sorted(by_name) == sorted(f.name for f in inputs)
    outcomes = Counter(r.outcome for r in rows)
    assert outcomes["failed"] == BROKEN and {by_name[f"broken-{i}.jpeg"].outcome for i in range(BROKEN)} == {
        "failed"
    }
    assert outcomes["screened"] + outcomes["duplicate"] == DISTINCT + COPIES
    decodable = {sha256_file(f)[0] for f in inputs if not f.name.startswith("broken-")}
    assert sorted(site.column(results.c.content_sha256)) == sorted(decodable)  # one result each
    assert all(Path(r.destination_path).is_file() for r in rows)

    # The dead worker's claims: finished by the others, after its lease ran out.
    earliest = killed_at + timedelta(seconds=LEASE - beat_interval(LEASE) - 1)
    for name in held:
        row = by_name[name]
        if row.worker_id == VICTIM:  # committed just before the kill; the move was left
            assert row.at <= killed_at
        else:
            assert row.at >= earliest, (name, row.worker_id, row.at, killed_at)
    assert any(by_name[name].worker_id != VICTIM for name in held)
    adopted = [
        (int(n), w, who) for who in WORKERS if who != VICTIM for n, w in ADOPTED.findall(site.log(who))
    ]
    assert {w for _, w, _ in adopted} == {VICTIM} and sum(n for n, _, _ in adopted) == len(held)

    # Every worker did part of the work, and the report says how much, as the audit rows do.
    per_worker = Counter((r.worker_host, r.worker_id, r.outcome) for r in rows)
    report = {(w["worker_host"], w["worker_id"]): w for w in site.report()["workers"]}
    assert sorted(worker_id for _, worker_id in report) == sorted(WORKERS)
    for (host, worker_id), line in report.items():
        counts = {o: per_worker[(host, worker_id, o)] for o in ("screened", "duplicate", "failed")}
        assert line["files"] == sum(counts.values()) > 0, (worker_id, line)
        assert (line["screened"], line["duplicates"], line["failed"]) == (
            counts["screened"],
            counts["duplicate"],
            counts["failed"],
        )
    assert sum(line["files"] for line in report.values()) == len(inputs)
    assert not any("Traceback" in site.log(w) for w in WORKERS)

    files = {w: line["files"] for (_, w), line in report.items()}
    print(
        f"\nstart-up {ready - began:.1f} s; files per worker {files} ({VICTIM} killed after {dropped} "
        f"files had arrived, holding "
        f"{len(held)}, adopted {adopted}); all filed {finished - ready:.1f} s after ready, "
        f"last adopted file at +{max((by_name[n].at - killed_at).total_seconds() for n in held):.1f} s "
        "after the kill"
    )
