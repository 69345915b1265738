"""Chaos: SIGKILL the real daemon again and again while it works, then check nothing was lost.

    python bench/chaos.py --db sqlite --files 500 --kills 12
    python bench/chaos.py --db postgres --files 500 --kills 12      # a fresh database on --pg-url
    python bench/chaos.py --db postgres --files 100 --kills 0 --outage 30   # the server stops 30 s

The inputs are real chest X-rays (``chest_xray_full``): FILES distinct contents (copies of
the 436 JPEGs with a few bytes appended after the JPEG end marker: same pixels, another
hash), plus a few byte-identical duplicates and a few corrupt files, all with unique names.
They arrive in waves, before and while the real ``xray-worker watch`` runs (shipped model
by default), and the daemon is killed with SIGKILL KILLS times and restarted each time:
most kills come from outside at random moments (a random delay, or a random number of
committed files), and three lives are started with a crash point armed
(``worker/runtime/faults.py``): inside the batch transaction, right after the commit, and in the
middle of a move. The last life runs until every file is handled and stops with SIGTERM.

Then the invariants: every input is in exactly one place (processed/ if decodable, else
failed/ with its .error.json), with its content intact; nothing is left in the inbox or
the work area; exactly one result per (content, model) and one per decodable content;
exactly one audit row per input, each pointing at a file that exists. Violations are
listed and the exit status is 1. ``--json PATH`` writes the figures for the tests.

``--outage SECONDS`` takes the database away during the last life: PostgreSQL is stopped
(``pg_ctlcluster``; only on a server nobody else is using) or, for SQLite, another
connection holds the write lock; files keep arriving meanwhile.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from worker.names import for_log, from_stored

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from outputs import filed as filed_under  # the tests' own helper

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("XRAY_SCREEN_DATA", ROOT.parent / "shared" / "data"))
EXE = Path(sys.executable).with_name("xray-worker")
DEFAULT_PG = (
    os.environ.get("XRAY_SCREEN_TEST_POSTGRES_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
FAULT_POINTS = ("in-commit", "after-commit", "mid-move")
PLAIN = ("img-", "dup-", "bad-")  # how every input that is not AWKWARD is named
# Awkward names among the inputs: not UTF-8, at NAME_MAX, control characters, look-alikes.
AWKWARD = [
    b"\xe9t\xe9 chaos.jpeg",
    b"\xe9" * 250 + b".jpeg",
    b"c" * 250 + b".jpeg",
    b" leading space chaos.jpeg",
    b"trailing dot chaos.",
    b"new\nline \x1b[31mchaos.jpeg",
    b'quote\'s "$(chaos)".jpeg',
    b"Chaos-Case.jpeg",
    b"chaos-case.jpeg",
    "chaos-\u00e9.jpeg".encode(),
    "chaos-e\u0301.jpeg".encode(),
    b"\xff\xfe chaos.png",
]
WORKER_ID = "chaos"


@dataclass(frozen=True)
class Audit:
    source_path: str  # as the worker named it: worker.names.from_stored of the two columns
    destination_path: str | None
    outcome: str
    content_sha256: str | None


@dataclass(frozen=True)
class Input:
    name: str
    sha256: str
    decodable: bool


@dataclass
class Kill:
    life: int
    how: str  # "outside, random delay", "outside, after N commits" or the fault point
    seconds_after_ready: float
    claimed: int = 0  # files in the work area when it died
    committed_not_moved: int = 0  # of those, how many had their audit row committed
    two_names: int = 0  # of those, how many were also linked at their destination
    awkward: int = 0  # of those, how many had one of the AWKWARD names


@dataclass
class Report:
    db: str
    inputs: int
    distinct: int
    kills: list[Kill] = field(default_factory=list)
    lives: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    outage: dict[str, float | int | bool] = field(default_factory=dict)


# -- the inputs ----------------------------------------------------------------------


def make_inputs(staging: Path, files: int, rng: random.Random) -> list[Input]:
    """FILES distinct real X-rays, plus duplicates and corrupt files, written to ``staging``."""
    sources = sorted((DATA / "chest_xray_full").rglob("*.jpeg"))
    if not sources:
        raise SystemExit(f"no JPEGs under {DATA / 'chest_xray_full'} (set XRAY_SCREEN_DATA)")
    staging.mkdir(parents=True)
    inputs: list[Input] = []

    def write(name: str, data: bytes, decodable: bool) -> None:
        (staging / name).write_bytes(data)
        inputs.append(Input(name, hashlib.sha256(data).hexdigest(), decodable))

    blobs = []
    for i in range(files):
        data = sources[i % len(sources)].read_bytes() + f"\nchaos {i}\n".encode()  # after the EOI marker
        blobs.append(data)
        write(f"img-{i:04d}.jpeg", data, True)
    for i in range(max(2, files // 50)):
        write(f"dup-{i:03d}.jpeg", rng.choice(blobs), True)
    for i, raw in enumerate(AWKWARD):  # names a share can hold (issue 18), claimed when killed too
        data = rng.choice(sources).read_bytes() + f"\nawkward {i}\n".encode()
        blobs.append(data)
        write(os.fsdecode(raw), data, True)
    for i in range(max(2, files // 100)):
        cut = sources[(7 * i) % len(sources)].read_bytes()[: 3000 + i]
        if i % 2:
            write(f"bad-{i:03d}.txt", f"not an image {i}\n".encode(), False)
        else:
            write(f"bad-{i:03d}.jpeg", cut, False)  # truncated
    rng.shuffle(inputs)
    return inputs


# -- the site: folders, database, the daemon -----------------------------------------


class Site:
    def __init__(self, root: Path, db_url: str, model_args: list[str], batch_size: int):
        self.root, self.db_url, self.model_args, self.batch_size = root, db_url, model_args, batch_size
        self.inbox, self.processed, self.failed = root / "inbox", root / "processed", root / "failed"
        self.staging, self.log_path = root / "staging", root / "daemon.log"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(db_url, pool_pre_ping=True)

    @property
    def work(self) -> Path:
        return self.inbox / ".xray-screen"

    def start(self, fault: str = "", every: int = 1) -> tuple[subprocess.Popen, int]:
        """Start the daemon and wait until it is ready; returns it, and where its log begins."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("XRAY_SCREEN_FAULT")}
        if fault:
            env.update(XRAY_SCREEN_FAULT=fault, XRAY_SCREEN_FAULT_EVERY=str(every))
        args = [
            str(EXE), "watch", "--inbox", str(self.inbox), "--processed", str(self.processed),
            "--failed", str(self.failed), "--db", self.db_url, "--worker-id", WORKER_ID,
            "--batch-size", str(self.batch_size), "--set", "inbox.stability_seconds=0.3",
            "--set", "inbox.max_wait_ms=100", "--set", "inbox.rescan_interval=5", *self.model_args,
        ]  # fmt: skip
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 240
        while "ready: screening" not in self.log(offset):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the daemon did not start (exit {proc.poll()}):\n{self.log(offset)}")
            time.sleep(0.05)
        return proc, offset

    def log(self, offset: int = 0) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def drop(self, names: list[str]) -> None:
        for name in names:
            (self.staging / name).rename(self.inbox / name)  # appears complete, like a finished copy

    def audit_count(self) -> int | None:
        try:
            with self.engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
        except Exception:  # the database may be down on purpose; the caller waits
            return None

    def claimed(self) -> list[Path]:
        return [p for p in self.work.glob("*/*~*") if p.is_file()] if self.work.exists() else []

    def filed(self) -> list[Path]:
        return filed_under(self.processed, self.failed)

    def snapshot(self, kill: Kill) -> None:
        """What the dead daemon left in flight."""
        claimed = self.claimed()
        kill.claimed = len(claimed)
        kill.two_names = sum(p.stat().st_nlink > 1 for p in claimed)
        kill.awkward = sum(not p.name.partition("~")[2].startswith(PLAIN) for p in claimed)
        ids = [
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"xray-screen-claim:{p.name.partition('~')[0]}"))
            for p in claimed
        ]
        if ids:
            with self.engine.connect() as conn:
                rows = conn.execute(text("SELECT event_id FROM audit_events")).scalars().all()
            committed = {str(uuid.UUID(str(r))) for r in rows}
            kill.committed_not_moved = sum(i in committed for i in ids)


# -- invariants ----------------------------------------------------------------------


def check(site: Site, inputs: list[Input]) -> tuple[list[str], dict[str, int]]:
    """Every way the run could have lost, duplicated or mis-recorded a file; and the outcomes."""
    bad: list[str] = []
    expected = {i.name: i for i in inputs}
    left = [p.name for p in site.inbox.iterdir() if p.name != ".xray-screen"]
    bad += [f"left in the inbox: {n}" for n in sorted(left)]
    if site.work.exists():
        for area in site.work.iterdir():
            bad += [
                f"left in the work area: {p.name}"
                for p in area.iterdir()
                if p.name not in (".alive", ".lock")
            ]
    places: dict[str, list[Path]] = {}
    for base in (site.processed, site.failed):
        for p in base.rglob("*") if base.exists() else []:
            if p.is_file():
                places.setdefault(p.name, []).append(p)
    for name, paths in sorted(places.items()):
        if name.endswith(".error.json"):
            if name.removesuffix(".error.json") not in expected:
                bad.append(f"sidecar of no input: {paths}")
            continue
        if name not in expected:
            bad.append(f"unexpected file: {[str(p) for p in paths]}")
    for item in inputs:
        paths = places.get(item.name, [])
        if len(paths) != 1:
            bad.append(f"{item.name}: in {len(paths)} places {[str(p) for p in paths]}")
            continue
        path = paths[0]
        home = site.processed if item.decodable else site.failed
        if home not in path.parents:
            bad.append(f"{item.name}: filed under the wrong folder: {path}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != item.sha256:
            bad.append(f"{item.name}: content changed: {path}")
        if not item.decodable and not path.with_name(item.name + ".error.json").exists():
            bad.append(f"{item.name}: no .error.json beside it")
    with site.engine.connect() as conn:
        per_key = conn.execute(
            text("SELECT content_sha256, count(*) FROM results GROUP BY content_sha256, model_sha256")
        ).all()
        audits = [
            Audit(from_stored(a[0], a[1]), a[2] and from_stored(a[2], a[3]), a[4], a[5])
            for a in conn.execute(
                text(
                    "SELECT source_path, source_path_hex, destination_path, destination_path_hex,"
                    " outcome, content_sha256 FROM audit_events"
                )
            )
        ]
    bad += [f"result stored {n} times for content {sha[:12]}" for sha, n in per_key if n != 1]
    decodable = {i.sha256 for i in inputs if i.decodable}
    stored = {sha for sha, _ in per_key}
    # A film the gate refused (out of scope) has its audit row and no result: the model gave
    # no verdict. Every other decodable content has exactly one result.
    refused = {a.content_sha256 for a in audits if a.outcome == "out_of_scope"}
    bad += [f"no result for content {sha[:12]}" for sha in sorted(decodable - stored - refused)]
    bad += [f"a result for a refused content: {sha[:12]}" for sha in sorted(stored & refused)]
    bad += [f"a result for content no decodable input has: {sha[:12]}" for sha in sorted(stored - decodable)]
    per_source = Counter(Path(a.source_path).name for a in audits)
    for item in inputs:
        if per_source[item.name] != 1:
            bad.append(f"{item.name}: {per_source[item.name]} audit rows")
    bad += [f"audit row for no input: {n}" for n in per_source if n not in expected]
    for a in audits:
        if not a.destination_path or not Path(a.destination_path).is_file():
            bad.append(
                f"audit row of {Path(a.source_path).name} points at a missing file: {a.destination_path}"
            )
        elif Path(a.destination_path).name != Path(a.source_path).name:
            bad.append(f"audit row of {Path(a.source_path).name} points at {a.destination_path}")
    screened = Counter(a.content_sha256 for a in audits if a.outcome == "screened")
    bad += [f"content {sha[:12]} screened {n} times" for sha, n in screened.items() if n > 1]
    return bad, dict(Counter(a.outcome for a in audits))


# -- the run -------------------------------------------------------------------------


def fault_lives(kills: int, points: list[str]) -> dict[int, str]:
    """Which lives start with which crash point armed: spread over the run, never the last."""
    points = points[:kills]
    return {(j + 1) * kills // (len(points) + 1): point for j, point in enumerate(points)}


def drip(site: Site, names: list[str], rng: random.Random, spread: float = 0.5) -> threading.Thread:
    """Drop ``names`` into the inbox one by one over about ``spread`` seconds, in the background."""

    def run() -> None:
        for name in names:
            site.drop([name])
            time.sleep(rng.uniform(0, 2 * spread / max(1, len(names))))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def kill_outside(site: Site, proc: subprocess.Popen, rng: random.Random, life: int, wave: int) -> Kill:
    """SIGKILL at a random moment: after a random delay, or once a random number of files is committed."""
    ready = time.monotonic()
    if life % 2:
        delay = rng.uniform(0.05, 2.5)
        time.sleep(delay)
        how = f"outside, after {delay:.2f} s"
    else:
        base = site.audit_count() or 0
        target = base + rng.randint(1, max(1, wave))
        deadline = time.monotonic() + 60
        while (site.audit_count() or 0) < target and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        how = f"outside, at committed file {target - base}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return Kill(life, how, round(time.monotonic() - ready, 2))


def wait_for_fault(proc: subprocess.Popen, life: int, point: str, every: int) -> Kill:
    """The daemon kills itself at its armed crash point; from outside if it never gets there."""
    ready = time.monotonic()
    try:
        proc.wait(timeout=90)
        how = (
            f"{point} #{every}" if proc.returncode == -signal.SIGKILL else f"{point}: exit {proc.returncode}"
        )
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        how = f"{point} not reached; outside"
    return Kill(life, how, round(time.monotonic() - ready, 2))


def take_database_away(site: Site, seconds: float, backend: str, cluster: str) -> float:
    """PostgreSQL stopped, or SQLite's write lock held elsewhere, for ``seconds``; when it came back."""
    if backend == "postgres":
        ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main"]
        subprocess.run([*ctl, "stop"], check=True)
        time.sleep(seconds)
        subprocess.run([*ctl, "start"], check=True)
    else:
        conn = sqlite3.connect(str(make_url(site.db_url).database), isolation_level=None, timeout=60)
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()
    return time.monotonic()


def settle(site: Site, total: int, proc: subprocess.Popen, timeout: float = 600) -> list[str]:
    """Wait until every file is handled, then SIGTERM; problems with the last life, if any."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        waiting = [p for p in site.inbox.iterdir() if p.name != ".xray-screen"]
        if not waiting and not site.claimed() and len(site.filed()) >= total and site.audit_count() == total:
            break
        time.sleep(0.2)
    problems = [] if proc.poll() is None else [f"the last life died by itself (exit {proc.returncode})"]
    if time.monotonic() >= deadline:
        problems.append(f"not every file handled within {timeout:.0f} s")
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=120) != 0:
        problems.append(f"SIGTERM: exit {proc.returncode}, expected 0")
    return problems


def setup_database(args: argparse.Namespace, root: Path) -> tuple[str, Callable[[], None]]:
    """A fresh database at head: a SQLite file, or a new database on the PostgreSQL server."""
    from worker.db import migrate
    from worker.db.engine import make_engine

    if args.db == "sqlite":
        url, drop = f"sqlite:///{root / 'results.db'}", lambda: None
    else:
        # No pooled connection to go stale over an --outage.
        admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        name = f"xray_chaos_{secrets.token_hex(4)}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = make_url(args.pg_url).set(database=name).render_as_string(hide_password=False)

        def drop() -> None:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()

    engine = make_engine(url, create=True)
    migrate.upgrade(engine)
    engine.dispose()
    return url, drop


def run(args: argparse.Namespace) -> Report:
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="xray-chaos-"))
    db_url, drop_db = setup_database(args, root)
    model_args = ["--model", str(args.model), "--trust-model"] if args.model else []
    site = Site(root, db_url, model_args, args.batch_size)
    inputs = make_inputs(site.staging, args.files, rng)
    report = Report(args.db, len(inputs), len({i.sha256 for i in inputs if i.decodable}))
    lives = args.kills + 1
    waves = [[i.name for i in inputs[n::lives]] for n in range(lives)]
    armed = fault_lives(args.kills, args.faults)
    t0 = time.monotonic()
    procs: list[subprocess.Popen] = []
    try:
        for life, names in enumerate(waves):
            half = len(names) // 2
            site.drop(names[:half])  # waiting at start-up; the rest arrives while it runs
            point = armed.get(life, "")
            every = rng.randint(1, max(1, len(names) // 3)) if point == "mid-move" else rng.randint(1, 2)
            proc, offset = site.start(point, every)
            procs.append(proc)
            report.lives += 1
            last = life == args.kills
            spread = args.outage if last and args.outage else 0.5
            dropper = drip(site, names[half:], rng, spread)
            if not last:
                if point:
                    kill = wait_for_fault(proc, life, point, every)
                else:
                    kill = kill_outside(site, proc, rng, life, len(names))
                dropper.join()
                site.snapshot(kill)
                report.kills.append(kill)
                print(f"life {life}: {asdict(kill)}", file=sys.stderr, flush=True)
                continue
            if args.outage:
                went = time.monotonic()
                back = take_database_away(site, args.outage, args.db, args.pg_cluster)
                report.outage = {"seconds": round(back - went, 1), "alive_after": proc.poll() is None}
            dropper.join()
            report.violations += settle(site, len(inputs), proc)
            if args.outage:
                report.outage["caught_up_s"] = round(time.monotonic() - back, 1)
                report.outage["retries_logged"] = site.log(offset).count("retrying in")
        report.seconds = round(time.monotonic() - t0, 1)
        bad, report.outcomes = check(site, inputs)
        report.violations += bad
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        site.engine.dispose()
        drop_db()
    if args.keep or report.violations:
        print(f"the run's folders are kept in {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return report


def markdown(report: Report) -> str:
    injected = sum(not k.how.startswith("outside") for k in report.kills)
    lines = [
        f"{report.db}: {report.inputs} files ({report.distinct} distinct decodable contents), "
        f"{report.lives} lives, {len(report.kills)} SIGKILLs ({injected} at armed crash points), "
        f"{report.lives - 1} restarts, {report.seconds:.0f} s; outcomes {report.outcomes}; "
        f"invariant violations: {len(report.violations)}",
        "",
        "| life | killed | s after ready | claimed | of them awkward names | committed, not moved "
        "| linked in both places |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {k.life} | {k.how} | {k.seconds_after_ready:.2f} | {k.claimed} | {k.awkward} "
        f"| {k.committed_not_moved} | {k.two_names} |"
        for k in report.kills
    ]
    if report.outage:
        lines.append(f"\nDatabase away: {report.outage}")
    lines += [f"- VIOLATION: {for_log(v)}" for v in report.violations]
    return "\n".join(lines)


def pg_cluster() -> str:
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*"))
    return versions[-1] if versions else "15"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--files", type=int, default=500, help="distinct decodable contents (default 500)")
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--faults", default=",".join(FAULT_POINTS), help="crash points to arm, in order")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", type=Path, help="a model you made (loaded with --trust-model)")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="server to create the run's database on")
    parser.add_argument("--pg-cluster", default=pg_cluster(), help="version, for pg_ctlcluster (--outage)")
    parser.add_argument("--outage", type=float, default=0, help="seconds without the database")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the run's folders")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    args.faults = [f for f in args.faults.split(",") if f]
    unknown = set(args.faults) - set(FAULT_POINTS)
    if unknown:
        parser.error(f"--faults: unknown {sorted(unknown)}; choose from {FAULT_POINTS}")
    report = run(args)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(markdown(report))
    sys.exit(1 if report.violations else 0)


if __name__ == "__main__":
    main()
