"""``xray-worker healthcheck`` on folders that are not there yet, as after installing a wheel:
the check passes when ``watch`` can create them (it does at start), creates nothing itself,
names the working directory a relative folder depends on, and fails a folder that cannot be
made. The shipped model; no training data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli import cli
from worker.cli.watch import folder_check


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, and a database at head outside it."""
    for name in list(os.environ):
        if name.startswith("XRAY_SCREEN_"):
            monkeypatch.delenv(name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert CliRunner().invoke(cli, ["db", "upgrade", "--db", db_url(tmp_path)]).exit_code == 0
    return work


def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


def healthcheck(tmp_path: Path, *folders: str) -> tuple[int, list[str]]:
    args = ["healthcheck", "--db", db_url(tmp_path)]
    for name, folder in zip(("--inbox", "--processed", "--failed"), folders, strict=True):
        args += [name, folder]
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output.splitlines()


def test_relative_folders_not_there_yet_pass_and_are_not_created(site: Path, tmp_path: Path):
    code, lines = healthcheck(tmp_path, "var/inbox", "var/processed", "var/failed")
    assert code == 0, lines
    assert len(lines) == 6 and all(line.startswith("ok    ") for line in lines), lines
    assert lines[1] == (
        f"ok    inbox var/inbox (relative to the working directory: {site}/var/inbox) "
        f"does not exist yet: watch will create it ({site} is writable)"
    )
    assert list(site.iterdir()) == []  # a check creates nothing


def test_a_folder_that_cannot_be_made_fails(site: Path, tmp_path: Path):
    (site / "var").write_text("a file where the folders would go")
    code, lines = healthcheck(tmp_path, "var/inbox", str(site / "processed"), str(site / "failed"))
    assert code == 1
    assert lines[1] == (
        f"FAIL  inbox var/inbox (relative to the working directory: {site}/var/inbox) "
        f"does not exist, and watch could not create it: {site}/var: not a folder"
    )
    assert lines[2].startswith(f"ok    processed {site}/processed does not exist yet")


def test_folders_that_are_there_must_take_a_file(tmp_path: Path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    assert folder_check("inbox", folder) == (f"inbox {folder} writable", None)
    (tmp_path / "file").write_text("")
    assert folder_check("failed", tmp_path / "file") == (
        f"failed {tmp_path / 'file'} writable",
        "it is not a folder",
    )
    if os.geteuid() != 0:  # root writes anywhere
        folder.chmod(0o500)
        try:
            assert folder_check("inbox", folder)[1] == "Permission denied"
            assert folder_check("inbox", folder / "new")[1] == f"{folder}: Permission denied"
        finally:
            folder.chmod(0o700)
