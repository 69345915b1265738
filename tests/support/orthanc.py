"""A real PACS for the tests: Orthanc (the Debian package), started on free loopback ports
with its storage in a folder of the test, stopped (and restartable on the same storage) by it.

``send``'s tests deliver to it (tests/e2e/test_pacs_orthanc.py), ``pull``'s query and retrieve
from it (tests/e2e/test_pull_orthanc.py). Orthanc is required: a test fails without it
(apt-get install orthanc).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

OUR_AET = "XRAY_SCREEN"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


class Orthanc:
    """One Orthanc process on free loopback ports, with its storage in ``root``; stopped (and
    restartable on the same storage) by the test."""

    def __init__(self, root: Path, *, commitment_port: int = 0, modalities: dict[str, Any] | None = None):
        binary = shutil.which("Orthanc") or (
            "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
        )
        if binary is None:
            pytest.fail(
                "Orthanc is required for the PACS tests: apt-get update && apt-get install -y orthanc"
            )
        self.binary = binary
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        modalities = dict(modalities or {})
        if commitment_port:
            modalities["xray"] = {
                "AET": OUR_AET,
                "Host": "127.0.0.1",
                "Port": commitment_port,
                "AllowStorageCommitment": True,
            }
        config = {
            "Name": "xray-screen-test",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": modalities,
            "Plugins": [],
            "ConcurrentJobs": 1,
            "DicomThreadsCount": 2,
            "StableAge": 1,
        }
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=1))
        self.log = root / "orthanc.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._answers, 60, f"Orthanc to start (log: {self.log})")

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (Orthanc takes a few seconds to close), or SIGKILL: an outage at once."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.kill() if kill else proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"Orthanc exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            self.get("/system")
        except OSError:
            return False
        return True

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as reply:
            return json.load(reply)

    def sop_instance_uids(self) -> Counter[str]:
        """Every instance Orthanc holds, by SOP Instance UID (REST /instances?expand)."""
        return Counter(i["MainDicomTags"]["SOPInstanceUID"] for i in self.get("/instances?expand"))

    def study_ids(self, study_uid: str) -> list[str]:
        """Orthanc's ids of the studies with this Study Instance UID (/tools/find): none or one."""
        query = json.dumps({"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/tools/find",
            data=query,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
            return list(json.load(reply))

    def study_instances(self, study_uid: str) -> list[str]:
        """The SOP Instance UIDs of one study, found with /tools/find, then /studies/{id}/instances."""
        [study_id] = self.study_ids(study_uid)
        return [i["MainDicomTags"]["SOPInstanceUID"] for i in self.get(f"/studies/{study_id}/instances")]

    def upload(self, payload: bytes) -> str:
        """Store one DICOM file (REST POST /instances); its Orthanc id."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/instances",
            data=payload,
            headers={"Content-Type": "application/dicom"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
            return json.load(reply)["ID"]

    def set_modality(self, name: str, aet: str, port: int) -> None:
        """Declare (or change) a DICOM modality while Orthanc runs: a C-MOVE destination."""
        body = json.dumps({"AET": aet, "Host": "127.0.0.1", "Port": port}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/modalities/{name}", data=body, method="PUT"
        )
        with urllib.request.urlopen(request, timeout=30):  # noqa: S310
            pass
