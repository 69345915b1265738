"""The xray-worker command line, driven the way an operator uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli.main import cli
from worker.db import migrate
from worker.db.engine import make_engine
from worker.model.learner import file_sha256

ROOT = Path(__file__).resolve().parents[2]


def all_commands(group=cli, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from all_commands(command, (*prefix, name))


@pytest.mark.parametrize("command", [(), *all_commands()])
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_predict_prints_a_line_per_file_and_fails_on_bad_ones(trained_model: Path, dicom_dir: Path, tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_text("hello")
    files = [dicom_dir / "CR-MONO1-10-chest.dcm", bad, dicom_dir / "WG04_RG1_J2KI.dcm"]
    result = CliRunner().invoke(
        cli, ["predict", "--trust-model", "--model", str(trained_model), *map(str, files)]
    )
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line, path in zip(lines, [files[0], files[2]], strict=True):
        name, label, probs = line.split("  ")
        assert name == str(path) and label in ("NORMAL", "PNEUMONIA")
        values = dict(p.split("=") for p in probs.split())
        assert set(values) == {"NORMAL", "PNEUMONIA"}
        assert abs(sum(map(float, values.values())) - 1) < 1e-3
    assert f"{bad}  ERROR  not an image: the file is text" in result.stderr
    assert "3 files" in result.stderr and "1 failed" in result.stderr


def test_predict_json_on_a_folder(trained_model: Path, full_res_dir: Path):
    digest = file_sha256(trained_model)
    result = CliRunner().invoke(
        cli,
        ["predict", "--json", "--sha256", digest, "--model", str(trained_model), str(full_res_dir / "val")],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 16
    assert {r["format"] for r in records} == {"JPEG"}
    assert all(r["model_sha256"] == digest for r in records)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in records)


def test_predict_refuses_an_unchecked_model_with_exit_78(trained_model: Path, dicom_dir: Path):
    result = CliRunner().invoke(cli, ["predict", "--model", str(trained_model), str(dicom_dir)])
    assert result.exit_code == 78
    assert "no SHA-256 is configured" in result.output


def test_bad_config_value_names_key_and_file(tmp_path: Path, dicom_dir: Path):
    config = tmp_path / "site.toml"
    config.write_text("[inference]\nbatch_size = -4\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "predict", str(dicom_dir)])
    assert result.exit_code == 78
    assert f"{config}: [inference] batch_size = -4: must be at least 1" in result.output


def test_installed_console_script_runs(trained_model: Path, dicom_dir: Path):
    exe = Path(sys.executable).with_name("xray-worker")
    proc = subprocess.run(
        [exe, "predict", "--trust-model", "--model", trained_model, dicom_dir / "WG04_RG1_JLSN.dcm"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(dicom_dir / "WG04_RG1_JLSN.dcm"))
    assert "FutureWarning" not in proc.stderr


def test_healthcheck_reports_each_problem(trained_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    folders = [
        "--inbox",
        str(tmp_path / "in"),
        "--processed",
        str(tmp_path / "out"),
        "--failed",
        str(tmp_path / "bad"),
    ]
    for name in ("in", "out", "bad"):
        (tmp_path / name).mkdir()
    args = ["healthcheck", *folders, "--db", url, "--model", str(trained_model), "--trust-model"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "FAIL  database" in result.output and "xray-worker db upgrade" in result.output
    assert result.output.count("ok    ") == 5  # settings, three folders, model
    assert CliRunner().invoke(cli, ["db", "upgrade", "--db", url]).exit_code == 0
    (tmp_path / "out").chmod(0o500)
    try:
        result = CliRunner().invoke(cli, args)
        if os.geteuid() != 0:  # root writes anywhere
            assert f"FAIL  processed {tmp_path / 'out'} writable" in result.output
    finally:
        (tmp_path / "out").chmod(0o700)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "ok    database" in result.output


def test_watch_refuses_a_database_not_at_head(trained_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = make_engine(url, create=True)  # a missing file would be created at head: one behind
    migrate.upgrade(engine, "0003")
    engine.dispose()
    args = [
        "watch",
        "--inbox",
        str(tmp_path / "in"),
        "--db",
        url,
        "--model",
        str(trained_model),
        "--trust-model",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 78
    assert "xray-worker db upgrade" in result.output


def test_predict_on_a_folder_of_links_says_what_it_skipped(tmp_path: Path):
    """A folder of 3 symbolic links, a hidden file and a FIFO: nothing to screen, and why."""
    target = ROOT / "samples" / "person1946_bacteria_4874.jpeg"
    folder = tmp_path / "links"
    folder.mkdir()
    for n in range(3):
        (folder / f"film-{n}.jpeg").symlink_to(target)
    (folder / ".hidden.jpeg").write_bytes(target.read_bytes())
    os.mkfifo(folder / "pipe")
    result = CliRunner().invoke(cli, ["predict", str(folder)])
    assert result.exit_code == 1
    assert (
        "no files to screen under the given paths (skipped: 1 hidden entries, "
        "1 special files (FIFOs, sockets, devices), 3 symbolic links (never followed))"
    ) in result.output
