"""``xray-worker report drift`` on a database filled through the store: a reference month,
a stable week and a shifted week; only the shifted one alarms, figure by figure, with exit
status 3, its metrics and its webhook."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from db_support import audit, result, sha
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from worker import exitcodes
from worker.cli import cli
from worker.db.store import Store
from worker.db.window import read_sample
from worker.drift.sample import Sample

pytest_plugins = ["db_fixtures"]

NOW = datetime.now(UTC).replace(microsecond=0)
FIGURES = ("positive_rate", "p_distribution", "refusal_rate", "format_mix", "size_mix")
REFERENCE = (NOW - timedelta(days=60), NOW - timedelta(days=30))  # a month, long ago
STABLE_UNTIL = NOW - timedelta(days=14)  # a week like the reference month: days 21..14 ago
THRESHOLD = 0.77
STABLE = {"positive_rate": 0.3, "refusal": 0.02, "formats": {"DICOM": 0.7, "JPEG": 0.3}}
SHIFTED = {"positive_rate": 0.55, "refusal": 0.12, "formats": {"DICOM": 0.3, "JPEG": 0.4, "PNG": 0.3}}


def fill(store: Store, tag: str, start: datetime, days: int, per_day: int, seed: int, **kind) -> None:
    """``per_day`` films a day through ``Store.record_batch``: verdicts with P drawn for the
    period's positive rate, a share refused by the gate, formats in the period's mix."""
    rng = np.random.default_rng(seed)
    formats = list(kind["formats"])
    for day in range(days):
        at = start + timedelta(days=day, hours=9)
        results, audits = [], []
        for i in range(per_day):
            when = at + timedelta(minutes=i)
            name = f"{tag}-{day}-{i}"
            if rng.random() < kind["refusal"]:
                audits.append(
                    audit(
                        name,
                        "out_of_scope",
                        at=when,
                        reason="unlike the films this model knows: score 1.31 > 1.00",
                    )
                )
                continue
            sick = rng.random() < kind["positive_rate"]
            p = float(rng.beta(9, 1.5) if sick else rng.beta(1.2, 9))
            fmt = str(rng.choice(formats, p=[kind["formats"][f] for f in formats]))
            side = {"DICOM": 2500, "JPEG": int(rng.integers(900, 2000)), "PNG": 400}[fmt]
            results.append(
                result(
                    name,
                    positive=p >= THRESHOLD,
                    positive_probability=p,
                    threshold=THRESHOLD,
                    finished_at=when,
                    image_format=fmt,
                    width=side,
                    height=side,
                )
            )
            audits.append(audit(name, at=when))
        store.record_batch(results, audits)


@pytest.fixture
def site(store: Store, db_url: str, tmp_path: Path) -> dict:
    """The reference month, a stable week (days 21..14 ago) and a shifted last week."""
    fill(store, "ref", REFERENCE[0], 30, 40, seed=1, **STABLE)
    fill(store, "stable", STABLE_UNTIL - timedelta(days=7), 7, 40, seed=2, **STABLE)
    fill(store, "shifted", NOW - timedelta(days=7), 7, 40, seed=3, **SHIFTED)
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n')
    return {"config": config, "reference": f"{REFERENCE[0].isoformat()}..{REFERENCE[1].isoformat()}"}


def drift(site: dict, *args: str) -> tuple[int, str]:
    run = CliRunner().invoke(
        cli, ["--config", str(site["config"]), "report", "drift", "--reference", site["reference"], *args]
    )
    assert run.exception is None or isinstance(run.exception, SystemExit), run.output
    return run.exit_code, run.output


def statuses(output: str) -> dict[str, str]:
    return {f["figure"]: f["status"] for f in json.loads(output)["figures"]}


def test_a_stable_week_does_not_alarm(site: dict):
    code, out = drift(site, "--until", STABLE_UNTIL.isoformat(), "--format", "json")
    assert code == exitcodes.OK, out
    assert statuses(out) == dict.fromkeys(FIGURES, "ok")
    data = json.loads(out)
    assert data["window"]["films"] > 250 and data["reference"]["films"] > 1100
    assert data["judged"] and data["alarms"] == []


def test_a_shifted_week_alarms_on_every_figure_and_exits_3(site: dict):
    code, out = drift(site, "--format", "json")
    assert code == exitcodes.DRIFT == 3, out
    assert statuses(out) == dict.fromkeys(FIGURES, "ALARM")
    figures = {f["figure"]: f for f in json.loads(out)["figures"]}
    rate = figures["positive_rate"]
    assert rate["recent_rate"] - rate["reference_rate"] > rate["limit"] > 0
    assert figures["refusal_rate"]["recent_rate"] > 0.08 > figures["refusal_rate"]["reference_rate"]
    assert (
        figures["format_mix"]["recent_shares"]["PNG"] > 0.2
        and figures["format_mix"]["reference_shares"]["PNG"] == 0
    )
    assert figures["size_mix"]["recent_shares"]["< 512 px"] > 0.2


def test_the_table_names_each_figure_its_limit_and_verdict(site: dict):
    code, out = drift(site)
    assert code == 3
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    for title in (
        "Positive rate",
        "P(PNEUMONIA) distribution",
        "Gate refusal rate",
        "Format mix",
        "Image size mix (long side, px)",
    ):
        assert lines[title].rstrip().endswith("ALARM"), out
    assert "DRIFT: 5 of 5 figures beyond their limits" in out
    code, out = drift(site, "--until", STABLE_UNTIL.isoformat())
    assert code == 0 and "no drift: every figure judged is within its limits" in out and "ALARM" not in out


def test_too_few_films_is_said_and_exits_0(site: dict):
    code, out = drift(site, "--until", (NOW - timedelta(days=25)).isoformat(), "--window", "2d")
    assert code == 0, out
    assert "too few films to judge" in out and set(
        statuses(
            drift(
                site, "--until", (NOW - timedelta(days=25)).isoformat(), "--window", "2d", "--format", "json"
            )[1]
        ).values()
    ) == {"too few films"}


def test_a_reference_overlapping_the_window_is_refused(site: dict):
    code, out = drift(site, "--window", "45d")
    assert code == exitcodes.USAGE and "overlaps the window" in out
    run = CliRunner().invoke(
        cli, ["--config", str(site["config"]), "report", "drift", "--reference", "last month"]
    )
    assert run.exit_code == exitcodes.USAGE and "use site-profile, a period" in run.output


def test_the_metrics_file_holds_every_figure(site: dict, tmp_path: Path):
    path = tmp_path / "drift.prom"
    code, _ = drift(site, "--metrics-file", str(path))
    assert code == 3
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }
    for figure in FIGURES:
        assert samples[("xray_screen_drift_alarm", (("figure", figure),))] == 1
        assert samples[("xray_screen_drift_judged", (("figure", figure),))] == 1
    assert samples[("xray_screen_drift_alarms", ())] == 5
    rates = {
        side: samples[("xray_screen_drift_positive_rate", (("sample", side),))]
        for side in ("recent", "reference")
    }
    assert rates["recent"] - rates["reference"] > 0.1, rates
    drift(site, "--until", STABLE_UNTIL.isoformat(), "--metrics-file", str(path))
    assert "xray_screen_drift_alarms 0.0" in path.read_text()


@pytest.fixture
def webhook() -> Iterator[list[dict]]:
    """A local HTTP server that records the JSON bodies POSTed to it."""
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    received.append({"url": f"http://127.0.0.1:{server.server_address[1]}/hook"})
    yield received
    server.shutdown()
    server.server_close()


def test_an_alarm_notifies_the_webhook_and_no_alarm_does_not(site: dict, webhook: list[dict]):
    url = webhook.pop(0)["url"]
    config = site["config"]
    config.write_text(config.read_text() + f'[notify]\nurls = ["{url}"]\nevents = ["drift"]\n')
    assert drift(site, "--until", STABLE_UNTIL.isoformat())[0] == 0
    assert webhook == []
    assert drift(site)[0] == 3
    [sent] = webhook
    body = json.dumps(sent)
    assert "drift" in body and "positive_rate" in body and "refusal_rate" in body


def test_the_window_sample_counts_verdicts_refusals_formats_and_sizes(store: Store, engine: Engine):
    at = NOW - timedelta(hours=3)
    store.record_batch(
        [
            result("a", finished_at=at, positive=True, image_format="PNG", width=300, height=200),
            result(
                "b", finished_at=at, positive_probability=0.2, image_format="JPEG", width=1500, height=900
            ),
        ],
        [
            audit("a", at=at),
            audit("b", at=at),
            audit("a", "duplicate", at=at, source_path="/inbox/a-again.dcm"),  # one verdict, not two
            audit("r", "out_of_scope", at=at, reason="Modality MR is not CR or DX"),
            audit("r", "out_of_scope", at=at, reason="Modality MR is not CR or DX", source_path="/x/r2.dcm"),
            audit("f", "failed", at=at),  # neither a verdict nor a refusal
        ],
    )
    sample = read_sample(engine, NOW - timedelta(days=1), NOW, "today")
    assert isinstance(sample, Sample)
    assert (sample.results, sample.positives, sample.refused, sample.gated) == (2, 1, 1, 3)
    assert sample.formats == {"PNG": 1, "JPEG": 1}
    assert sample.sizes == {"< 512 px": 1, "1024-2047 px": 1}
    assert sorted(sample.p_values.tolist()) == [0.2, 0.91]
    assert sample.model_sha256s == {sha("model A")}
    assert read_sample(engine, NOW - timedelta(days=1), at, "before").results == 0  # the end is excluded
