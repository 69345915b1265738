"""``xray-worker send`` over DICOMweb STOW-RS to a real Orthanc with its DICOMweb plugin, behind
HTTP basic auth: everything queued is delivered, and Orthanc holds each object once, even when
the same objects are posted again. Needs Orthanc and the plugin (apt-get install -y orthanc
orthanc-dicomweb); fails without them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import EXE
from pydicom.uid import generate_uid
from test_pacs_orthanc import Orthanc, database, fill, restamped, secondary_capture, statuses

pytestmark = pytest.mark.slow

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "xray", "stow-test-password"


class DicomWebOrthanc(Orthanc):
    """Orthanc with its DICOMweb plugin at /dicom-web/, every HTTP request behind basic auth."""

    def __init__(self, root: Path):
        if not PLUGIN.exists():
            pytest.fail(
                f"the Orthanc DICOMweb plugin is required: apt-get install -y orthanc-dicomweb ({PLUGIN})"
            )
        super().__init__(root)
        config = json.loads(self.config.read_text())
        config |= {
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
        }
        self.config.write_text(json.dumps(config, indent=1))
        self.url = f"http://127.0.0.1:{self.http_port}/dicom-web"

    def get(self, path: str) -> Any:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", headers={"Authorization": f"Basic {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
            return json.load(reply)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[DicomWebOrthanc]:
    server = DicomWebOrthanc(tmp_path / "orthanc")
    server.start()
    yield server
    server.stop()


def write_config(tmp_path: Path, url: str, orthanc: DicomWebOrthanc, *names: str) -> Path:
    lines = ["[database]", f'url = "{url}"', "[pacs]", "batch_size = 5", "backoff_base = 0.2"]
    for name in names:
        lines += [
            "[[pacs.destinations]]",
            f'name = "{name}"',
            f'dicomweb_url = "{orthanc.url}"',
            f'username = "{USER}"',
            'password_env = "XRAY_TEST_STOW_PASSWORD"',
        ]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def send_once(config: Path, password: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XRAY_TEST_STOW_PASSWORD": password}
    return subprocess.run(
        [EXE, "--config", str(config), "send", "--once"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_stow_rs_delivers_everything_once(tmp_path: Path, orthanc: DicomWebOrthanc, dicom_dir: Path):
    url, engine = database(tmp_path)
    payloads = restamped(dicom_dir, 1) + [secondary_capture(generate_uid()) for _ in range(8)]
    sent = fill(engine, payloads, "orthanc")
    again = fill(engine, payloads, "again")  # the same objects, posted a second time
    assert again == sent
    config = write_config(tmp_path, url, orthanc, "orthanc", "again")

    wrong = send_once(config, "not-the-password")
    assert wrong.returncode == 0, wrong.stderr
    assert statuses(engine) == Counter({"pending": 2 * len(sent)})
    assert "HTTP 401" in wrong.stderr and "not-the-password" not in wrong.stderr

    for _ in range(30):  # batches of 5 per destination and call; retries due after 0.2 s
        result = send_once(config, PASSWORD)
        assert result.returncode == 0, result.stderr
        if statuses(engine) == Counter({"delivered": 2 * len(sent)}):
            break
    assert statuses(engine) == Counter({"delivered": 2 * len(sent)}), result.stderr[-3000:]
    assert PASSWORD not in result.stderr
    assert orthanc.sop_instance_uids() == Counter(dict.fromkeys(sent, 1))
