"""The nightly scan's systemd timer and service (both also pass tests/unit/test_systemd.py's checks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
VENV = Path(sys.executable).parent.parent


def test_the_timer_verifies_beside_its_service(tmp_path: Path):
    for name in ("xray-screen-scan.timer", "xray-screen-scan.service"):
        text = (SYSTEMD / name).read_text().replace("/opt/xray-screen/.venv", str(VENV))
        (tmp_path / name).write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", tmp_path / "xray-screen-scan.timer"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_the_timer_runs_nightly_and_catches_up():
    text = (SYSTEMD / "xray-screen-scan.timer").read_text()
    for line in [
        "OnCalendar=*-*-* 01:00:00",
        "Persistent=true",
        "RandomizedDelaySec=",
        "WantedBy=timers.target",
    ]:
        assert line in text, line


def test_the_scan_service_is_read_only_and_in_the_background():
    text = (SYSTEMD / "xray-screen-scan.service").read_text()
    for line in [
        "Type=oneshot",
        "ExecStart=/opt/xray-screen/.venv/bin/xray-worker scan ",
        "Environment=XRAY_SCREEN_CONFIG=/etc/xray-screen/config.toml",
        "User=xray-screen",
        "SuccessExitStatus=130",
        "Nice=19",
        "IOSchedulingClass=idle",
        "CPUWeight=",
        "ProtectSystem=strict",
        "ReadOnlyPaths=/srv/archive",
        "RequiresMountsFor=/srv/archive",
        "NoNewPrivileges=yes",
    ]:
        assert line in text, line
    assert "ReadWritePaths=" not in text and "\nPrivateDevices=" not in text
    assert "[Install]" not in text  # started by its timer only
