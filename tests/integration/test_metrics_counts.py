"""Metrics against the database, for real: the daemon (built by worker.app with its metrics
endpoint, single-pass steps) and a scan (its textfile) over real X-rays with the shipped
model and real SQLite. Every counter must equal the rows the run wrote."""

from __future__ import annotations

import io
import os
import shutil
import socket
import urllib.request
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from worker.app import build_daemon, open_monitoring, run_scan
from worker.config import PROJECT_ROOT, SHIPPED_MODEL_SHA256, load_settings
from worker.db.engine import make_engine
from worker.db.schema import audit_events, results

SHIPPED = PROJECT_ROOT / "models" / "pneumonia-resnet18" / "export.pkl"
SAMPLES = sorted((PROJECT_ROOT / "samples").iterdir())  # 4 children's films, 2 adult DICOMs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


def by(found: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for labels, v in found.get(name, {}).items() if v}


def rows(url: str, worker_id: str) -> tuple[Counter[str], Counter[str]]:
    """Audit rows of ``worker_id`` by outcome, and the results they made by label."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            outcomes = Counter(
                dict(
                    conn.execute(
                        select(audit_events.c.outcome, func.count())
                        .where(audit_events.c.worker_id == worker_id)
                        .group_by(audit_events.c.outcome)
                    ).all()
                )
            )
            labels = Counter(
                dict(conn.execute(select(results.c.label, func.count()).group_by(results.c.label)).all())
            )
    finally:
        engine.dispose()
    return outcomes, labels


def films(folder: Path, full_res_dir: Path) -> None:
    """The samples, ten real films of the validation set, a copy (a duplicate), a broken file."""
    folder.mkdir(parents=True)
    for path in SAMPLES:
        shutil.copy(path, folder / path.name)
    for path in sorted((full_res_dir / "val").rglob("*.jpeg"))[:10]:
        if not (folder / path.name).exists():
            shutil.copy(path, folder / path.name)
    shutil.copy(SAMPLES[-1], folder / "copy-of-a-sample.jpeg")
    (folder / "truncated.jpeg").write_bytes(SAMPLES[-1].read_bytes()[:2000])


def settings_for(tmp_path: Path, **more: str):
    overrides = {
        "model.path": str(SHIPPED),
        "model.sha256": SHIPPED_MODEL_SHA256,
        "database.url": f"sqlite:///{tmp_path / 'results.db'}",
        "inference.batch_size": "8",
        "inbox.path": str(tmp_path / "inbox"),
        "inbox.processed": str(tmp_path / "processed"),
        "inbox.failed": str(tmp_path / "failed"),
        "inbox.stability_seconds": "0",
        "inbox.max_wait_ms": "0",
        **more,
    }
    return load_settings(None, environ={}, overrides=overrides)


@pytest.fixture
def umask():
    """build_daemon sets the process umask ([inbox] umask): put this process's back after."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def test_watch_metrics_scraped_over_http_equal_the_database(tmp_path: Path, full_res_dir: Path, umask):
    port = free_port()
    settings = settings_for(tmp_path, **{"metrics.listen": f"127.0.0.1:{port}"})
    films(tmp_path / "inbox", full_res_dir)
    dropped = len(list((tmp_path / "inbox").iterdir()))
    with ExitStack() as stack:
        daemon = build_daemon(settings, monitoring=open_monitoring(stack, settings))
        daemon.recover()
        while sum(1 for p in (tmp_path / "inbox").iterdir() if p.is_file()) or daemon.claimed:
            daemon.step()
        daemon.work.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            found = parse(response.read().decode())
    outcomes, labels = rows(settings.database.url, daemon.work.worker_id)
    assert sum(outcomes.values()) == dropped
    assert outcomes["screened"] and outcomes["duplicate"] and outcomes["failed"] and outcomes["out_of_scope"]
    assert by(found, "xray_screen_files_total", "outcome") == dict(outcomes)
    assert by(found, "xray_screen_predictions_total", "label") == dict(labels)
    positives = sum(v for k, v in found["xray_screen_predictions_total"].items() if ("positive", "true") in k)
    assert positives == labels["PNEUMONIA"]
    assert found["xray_screen_latency_seconds_count"][()] == dropped
    assert found["xray_screen_decode_seconds_count"][()] == outcomes["screened"]
    assert found["xray_screen_claimed_files"][()] == 0
    [info] = found["xray_screen_model_info"]
    assert dict(info)["sha256"] == SHIPPED_MODEL_SHA256[:12]
    assert found["process_resident_memory_bytes"][()] > 0


def test_scan_textfile_equals_the_database(tmp_path: Path, full_res_dir: Path):
    archive, prom = tmp_path / "archive", tmp_path / "textfile" / "xray-screen-scan.prom"
    films(archive, full_res_dir)
    prom.parent.mkdir()
    settings = settings_for(tmp_path, **{"metrics.textfile": str(prom), "scan.roots": str(archive)})
    _, code = run_scan(settings, since=None, limit=None, output=None, err=io.StringIO())
    assert code == 0
    found = parse(prom.read_text())
    outcomes, labels = rows(settings.database.url, "scan")
    assert sum(outcomes.values()) == len(list(archive.iterdir()))
    assert by(found, "xray_screen_files_total", "outcome") == dict(outcomes)
    assert by(found, "xray_screen_predictions_total", "label") == dict(labels)
    assert found["xray_screen_scan_exit_code"][()] == 0
    assert found["xray_screen_scan_skipped_files"][()] == 0
    assert "process_cpu_seconds_total" not in found  # no process metrics in a textfile

    _, code = run_scan(settings, since=None, limit=None, output=None, err=io.StringIO())
    again = parse(prom.read_text())  # the second run read nothing (a broken file stays broken)
    assert code == 0 and again["xray_screen_scan_skipped_files"][()] == len(list(archive.iterdir()))
    assert by(again, "xray_screen_files_total", "outcome") == {}
