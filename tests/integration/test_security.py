"""Nothing let in: paths stay inside their folders, secrets stay out of messages, files stay private."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli.main import cli
from worker.config import load_settings
from worker.errors import ConfigError
from worker.sinks.filer import Folders
from worker.sinks.filing import move_no_clobber, write_error_sidecar

WHEN = datetime(2026, 11, 25, 12, 0)


@pytest.mark.parametrize("label", ["../../etc", "/etc", "..", ".", "a/../../b", "PNEUMONIA\x00x", ""])
@pytest.mark.parametrize(
    "layout", ["{label}/{date}", "{label}/../../../{date}", "/{label}", "{year}/{month}/{label}"]
)
def test_destinations_never_leave_their_folder(tmp_path: Path, label: str, layout: str):
    folders = Folders(tmp_path / "processed", tmp_path / "failed", layout)
    folder = folders.processed_folder(label, WHEN)
    assert folder.resolve().is_relative_to((tmp_path / "processed").resolve()), folder
    assert folders.failed_folder(WHEN).resolve().is_relative_to((tmp_path / "failed").resolve())


@pytest.mark.parametrize("name", ["..png", "...", "-rf", "--help.jpeg", " lead.png", "a\nb.dcm", "x" * 255])
def test_odd_names_are_filed_inside_the_folder(tmp_path: Path, name: str):
    src = tmp_path / "work" / "file"
    src.parent.mkdir()
    src.write_bytes(b"x")
    moved = move_no_clobber(src, tmp_path / "out", name)
    assert moved.parent == tmp_path / "out" and moved.read_bytes() == b"x"
    sidecar = write_error_sidecar(moved, {"reason": "test"})
    assert sidecar.parent == tmp_path / "out"


def test_umask_setting_is_validated(tmp_path: Path):
    assert load_settings(None, environ={"XRAY_SCREEN_INBOX_UMASK": "077"}).inbox.umask == "077"
    with pytest.raises(ConfigError, match="must be an octal umask like 027"):
        load_settings(None, environ={"XRAY_SCREEN_INBOX_UMASK": "999"})


PASSWORD_URL = "postgresql+psycopg://xray:s3cret-pw@127.0.0.1:1/screen"  # noqa: S105  (a made-up secret)


@pytest.mark.parametrize("command", [["watch"], ["healthcheck"], ["db", "upgrade"], ["report"]])
def test_database_passwords_never_appear(command: list[str], tmp_path: Path, trained_model: Path):
    args = [*command, "--db", PASSWORD_URL]
    if command[0] in ("watch", "healthcheck"):
        args += [
            "--inbox",
            str(tmp_path / "in"),
            "--processed",
            str(tmp_path / "out"),
            "--failed",
            str(tmp_path / "bad"),
            "--model",
            str(trained_model),
            "--trust-model",
        ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "s3cret-pw" not in result.output
    assert "xray:***@127.0.0.1:1/screen" in result.output


def test_a_newline_in_a_file_name_cannot_forge_a_log_line():
    import logging

    from worker.logs import OneLineFormatter

    record = logging.LogRecord(
        "worker.daemon",
        logging.INFO,
        __file__,
        1,
        "%s: %s -> %s",
        ("x.png\nINFO worker.daemon: all.png: NORMAL", "NORMAL", "/out/x.png"),
        None,
    )
    line = OneLineFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert "\n" not in line
    assert line == "INFO worker.daemon: x.png\\nINFO worker.daemon: all.png: NORMAL: NORMAL -> /out/x.png"
