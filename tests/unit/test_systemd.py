"""The shipped systemd units pass systemd's own checks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "systemd").glob("*.service"))
TIMERS = sorted((ROOT / "systemd").glob("*.timer"))
VENV = Path(sys.executable).parent.parent


def installed_copy(unit: Path, tmp_path: Path) -> Path:
    """The unit as installed from this checkout (systemd checks that ExecStart exists)."""
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/xray-screen/.venv", str(VENV)))
    for other in (ROOT / "systemd").iterdir():
        if other != unit:
            shutil.copy(other, tmp_path / other.name)
    return copy


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_verifies(unit: Path, tmp_path: Path):
    proc = subprocess.run(
        ["systemd-analyze", "verify", installed_copy(unit, tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_is_hardened(unit: Path, tmp_path: Path):
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", installed_copy(unit, tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout).group(1))
    assert exposure <= 2.5, proc.stdout[-2000:]


def test_daemon_unit_settings():
    text = (ROOT / "systemd" / "xray-screen.service").read_text()
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "ExecStartPre=/opt/xray-screen/.venv/bin/xray-worker db upgrade",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=",
        "DeviceAllow=char-nvidia-uvm rw",
        "User=xray-screen",
        "RequiresMountsFor=/srv/xray",
        "ReadWritePaths=/srv/xray/inbox",
    ]:
        assert line in text, line
    assert "\nPrivateDevices=" not in text  # it would hide the GPU


def test_every_service_is_checked():
    assert {u.name for u in UNITS} >= {
        "xray-screen.service",
        "xray-screen-receive.service",
        "xray-screen-send.service",
        "xray-screen-drift.service",
        "xray-screen-scan.service",
        "xray-screen-pull.service",
    }


@pytest.mark.parametrize("timer", TIMERS, ids=lambda t: t.name)
def test_timer_verifies(timer: Path, tmp_path: Path):
    service = ROOT / "systemd" / timer.name.replace(".timer", ".service")
    installed_copy(service, tmp_path)
    proc = subprocess.run(
        ["systemd-analyze", "verify", tmp_path / timer.name, tmp_path / service.name],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    assert "Persistent=true" in timer.read_text()


def test_drift_unit_settings():
    """A daily one-shot that only reads the database: as tight as the sender's unit, and its
    alarm (exit 3) is a failure systemd shows, not a success."""
    text = (ROOT / "systemd" / "xray-screen-drift.service").read_text()
    for line in [
        "Type=oneshot",
        "ExecStart=/opt/xray-screen/.venv/bin/xray-worker report drift --metrics-file /var/lib/xray-screen/",
        "User=xray-screen",
        "StateDirectory=xray-screen",
        "ProtectSystem=strict",
        "PrivateDevices=yes",
        "MemoryDenyWriteExecute=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "MemoryMax=",
    ]:
        assert line in text, line
    assert "SuccessExitStatus" not in text and "DeviceAllow=" not in text and "db upgrade" not in text
    assert "OnCalendar=*-*-* 06:30:00" in (ROOT / "systemd" / "xray-screen-drift.timer").read_text()


def test_receiver_unit_settings():
    """The receiver needs no GPU and no JIT: tighter than the daemon's unit."""
    text = (ROOT / "systemd" / "xray-screen-receive.service").read_text()
    for line in [
        "Type=notify",
        "ExecStart=/opt/xray-screen/.venv/bin/xray-worker receive",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "User=xray-screen",
        "ProtectSystem=strict",
        "ReadWritePaths=/srv/xray/inbox\n",  # the inbox only: not processed/ or failed/
        "PrivateDevices=yes",
        "MemoryDenyWriteExecute=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "MemoryMax=",
    ]:
        assert line in text, line
    assert "DeviceAllow=" not in text and "db upgrade" not in text  # no GPU, no database


def test_sender_unit_settings():
    """The PACS sender needs no GPU, no JIT and no inbox: as tight as the receiver's unit."""
    text = (ROOT / "systemd" / "xray-screen-send.service").read_text()
    for line in [
        "Type=notify",
        "ExecStart=/opt/xray-screen/.venv/bin/xray-worker send",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "User=xray-screen",
        "ProtectSystem=strict",
        "PrivateDevices=yes",
        "MemoryDenyWriteExecute=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "MemoryMax=",
    ]:
        assert line in text, line
    assert "DeviceAllow=" not in text and "ReadWritePaths=/srv/xray/inbox" not in text


def test_pull_unit_settings(tmp_path: Path):
    """The nightly PACS pull: a oneshot of its evening timer, writing only the inbox, no GPU, no
    JIT, exposure at most 2 (issue 27)."""
    text = (ROOT / "systemd" / "xray-screen-pull.service").read_text()
    for line in [
        "Type=oneshot",
        "ExecStart=/opt/xray-screen/.venv/bin/xray-worker pull\n",
        "User=xray-screen",
        "ProtectSystem=strict",
        "ReadWritePaths=/srv/xray/inbox\n",  # the inbox only: not processed/ or failed/
        "PrivateDevices=yes",
        "MemoryDenyWriteExecute=yes",
        "CapabilityBoundingSet=\n",
        "MemoryMax=",
    ]:
        assert line in text, line
    assert "DeviceAllow=" not in text and "[Install]" not in text  # started by its timer only
    timer = (ROOT / "systemd" / "xray-screen-pull.timer").read_text()
    assert "OnCalendar=*-*-* 20:00:00" in timer and "Persistent=true" in timer
    unit = installed_copy(ROOT / "systemd" / "xray-screen-pull.service", tmp_path)
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", unit], capture_output=True, text=True, check=False
    )
    assert float(re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout).group(1)) <= 2.0
