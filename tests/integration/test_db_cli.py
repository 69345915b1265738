"""``xray-worker db`` and ``xray-worker report``, driven the way an operator uses them."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from db_support import audit, populate, result

from worker.cli.main import cli
from worker.db.engine import make_engine
from worker.db.migrate import head_revision
from worker.db.store import Store

pytest_plugins = ["db_fixtures"]
HEAD = head_revision()


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def test_upgrade_creates_the_sqlite_file_the_config_names_then_current_and_downgrade(tmp_path: Path):
    config = tmp_path / "site.toml"
    config.write_text('[database]\nurl = "sqlite:///var/results.db"\n')
    database = tmp_path / "var" / "results.db"

    result = run("--config", str(config), "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert result.output == f"sqlite:///{database}: upgraded from none to {HEAD} (head)\n"
    assert database.exists()
    assert run("--config", str(config), "db", "upgrade").output.endswith(f"already at {HEAD} (head)\n")
    assert run("--config", str(config), "db", "current").output == f"sqlite:///{database}: {HEAD} (head)\n"

    refused = run("--config", str(config), "db", "downgrade", "base", input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    result = run("--config", str(config), "db", "downgrade", "base", "--yes")
    assert result.exit_code == 0, result.output
    assert result.output.endswith(f"downgraded from {HEAD} to none (empty)\n")

    check = run("--config", str(config), "db", "current", "--check")
    assert check.exit_code == 78
    assert f"none (empty), expected {HEAD}: run `xray-worker db upgrade`" in check.output


def test_upgrade_with_a_db_flag_on_either_engine(db_url: str):
    result = run("db", "upgrade", "--db", db_url)
    assert result.exit_code == 0, result.output
    assert f"upgraded from none to {HEAD} (head)" in result.output
    assert run("db", "current", "--db", db_url).output.endswith(f"{HEAD} (head)\n")


def test_commands_on_a_missing_or_old_database_say_what_to_run(tmp_path: Path, db_url: str):
    # report creates a missing SQLite file (tests/integration/test_db_first_use.py); db current does not
    missing = run("db", "current", "--db", f"sqlite:///{tmp_path / 'nope.db'}")
    assert missing.exit_code == 78 and "run `xray-worker db upgrade`" in missing.output
    assert not (tmp_path / "nope.db").exists()
    engine = make_engine(db_url, create=True)
    engine.connect().close()  # an empty database: a file with no tables, or an empty schema
    engine.dispose()
    empty = run("report", "flagged", "--db", db_url)
    assert empty.exit_code == 78
    assert f"at revision none (empty), expected {HEAD}: run `xray-worker db upgrade`" in empty.output


def test_an_unreachable_server_is_one_line_without_the_password():
    result = run("db", "current", "--db", "postgresql+psycopg://xray:s3cret@127.0.0.1:1/screen")
    assert result.exit_code == 75  # EX_TEMPFAIL: try again later
    assert "postgresql+psycopg://xray:***@127.0.0.1:1/screen: database unavailable" in result.output
    assert "s3cret" not in result.output


def test_report_on_an_empty_database(engine, db_url: str):
    result = run("report", "--db", db_url)
    assert result.exit_code == 0, result.output
    assert "Files handled          0" in result.output and "Nothing screened yet." in result.output
    flagged = run("report", "flagged", "--db", db_url, "--format", "csv")
    assert flagged.exit_code == 0 and flagged.output.startswith("handled_at,positive_probability,")


def test_report_on_a_populated_database_in_every_format(store: Store, db_url: str):
    populate(store, datetime.now(UTC))
    table = run("report", "--db", db_url)
    assert table.exit_code == 0, table.output
    assert "Files handled          8   screened 4, duplicates 1, out of scope 0, failed 3" in table.output
    assert "New results            4   positive 2 (50.0%)" in table.output
    assert "truncated JPEG" in table.output

    data = json.loads(run("report", "--db", db_url, "--since", "all", "--format", "json").output)
    assert data["since"] is None and data["totals"]["results"] == 5
    assert [m["model_version"] for m in data["models"]] == ["B", "A"]

    rows = list(csv.DictReader(io.StringIO(run("report", "--db", db_url, "--format", "csv").output)))
    assert {"section": "totals", "key": "", "metric": "failed", "value": "3"} in rows

    flagged = run("report", "flagged", "--db", db_url, "--since", "7d", "--format", "csv")
    paths = [row["source_path"] for row in csv.DictReader(io.StringIO(flagged.output))]
    assert paths == ["/inbox/b.dcm", "/inbox/b-copy.dcm", "/inbox/c.dcm"]


@pytest.mark.parametrize("command", [("report",), ("report", "flagged")])
def test_a_since_it_cannot_read_is_a_usage_error(command: tuple[str, ...], tmp_path: Path):
    result = run(*command, "--since", "yesterday", "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.exit_code == 2 and "not a duration" in result.output


def test_report_flagged_fits_a_terminal_and_keeps_every_column_for_files(store: Store, db_url: str):
    """The tour's positives (a scan's JPEG, then the same film filed by watch) in under 120
    characters a line, without the DICOM columns no row has; a DICOM brings its own."""
    now = datetime.now(UTC)
    jpeg = {k: None for k in ("sop_instance_uid", "study_instance_uid", "series_instance_uid", "modality")}
    jpeg |= {"accession_number": None, "patient_id": None, "image_format": "JPEG"}
    name = "person1946_bacteria_4874.jpeg"
    store.record_batch(
        [result("jpeg", positive=True, positive_probability=0.9125, finished_at=now, **jpeg)],
        [
            audit(
                "jpeg", at=now, worker_id="scan", source_path=f"/srv/archive/{name}", destination_path=None
            ),
            audit(
                "jpeg",
                "duplicate",
                at=now,
                source_path=f"/srv/xray/inbox/{name}",
                destination_path=f"/srv/xray/processed/PNEUMONIA/2026-12-02/{name}",
            ),
        ],
    )
    table = run("report", "flagged", "--db", db_url)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert max(map(len, lines)) <= 120, table.output
    header = lines.index("Flagged (positive) files:") + 1
    assert lines[header].split() == ["handled_at", "p", "threshold", "model", "path"]
    assert [line.split()[-1] for line in lines[header + 1 :]] == [
        f"/srv/archive/{name}",  # where the scan found it
        f"/srv/xray/processed/PNEUMONIA/2026-12-02/{name}",  # where watch filed it
    ]

    store.record_batch(
        [result("dcm", positive=True, positive_probability=0.81, finished_at=now)],
        [audit("dcm", at=now, destination_path="/srv/xray/processed/PNEUMONIA/2026-12-02/CR-0042.dcm")],
    )
    lines = run("report", "flagged", "--db", db_url).output.splitlines()
    # (no accession number: it is stored only with [database] store_patient_ids)
    assert lines[header].split() == ["handled_at", "p", "threshold", "model", "modality", "path"]
    assert lines[-1].split()[-2:] == ["CR", "/srv/xray/processed/PNEUMONIA/2026-12-02/CR-0042.dcm"]

    wide = run("report", "flagged", "--db", db_url, "--all-columns").output.splitlines()
    assert "sop_instance_uid" in wide[header] and "source_path" in wide[header]
    rows = list(
        csv.DictReader(io.StringIO(run("report", "flagged", "--db", db_url, "--format", "csv").output))
    )
    assert len(rows) == 3 and set(rows[0]) >= {"label", "sop_instance_uid", "source_path", "destination_path"}
