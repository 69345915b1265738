"""``xray-worker receive`` as a real process, with DCMTK's echoscu and storescu as the modality.

Every sent instance is screened by ``xray-worker watch`` on the same inbox; the receiver is
SIGKILLed mid-association twenty times and nothing it answered Success for is lost or
partial; a large instance is refused without the receiver's memory growing; a full disk
(a real 1 MiB tmpfs) is answered 0xA700. DCMTK is required: these tests fail without it.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from daemon_harness import EXE, Site, wait_for
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification
from sqlalchemy import create_engine, select

from worker.db.schema import audit_events, results

pytestmark = pytest.mark.slow

READY = "receiving as "
# storescu proposes one family of transfer syntaxes per run: each file with its own.
STORESCU_FLAGS = {
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline (the RSNA files)
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "": "-x=",  # no File Meta: implicit VR little endian
}


def dcmtk(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"DCMTK's {tool} is required (apt-get install dcmtk)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Receiver:
    """One ``xray-worker receive`` process on a free port of 127.0.0.1, with its log."""

    def __init__(self, inbox: Path, log: Path, *extra: str):
        self.port = free_port()
        self.log_path = log
        args = [EXE, "receive", "--inbox", inbox, "--port", str(self.port), "--secondary-capture", *extra]
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT)
        wait_for(lambda: READY in self.log() or self.proc.poll() is not None, 60, "receiver not ready")
        assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def receivers():
    started: list[Receiver] = []

    def start(inbox: Path, log: Path, *extra: str) -> Receiver:
        started.append(Receiver(inbox, log, *extra))
        return started[-1]

    yield start
    for receiver in started:
        receiver.kill()


def storescu(port: int, files: list[Path], flag: str, *, timeout: float = 120) -> subprocess.Popen:
    args = [dcmtk("storescu"), "-v", "-nh", flag, "-aec", "XRAY_SCREEN", "127.0.0.1", str(port)]
    return subprocess.Popen(
        [*args, *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def answered_success(output: str) -> list[str]:
    """The files storescu sent and got Success for, in order (from its -v output)."""
    done, current = [], None
    for line in output.splitlines():
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        elif line.startswith("I: Received Store Response (Success)") and current:
            done.append(current)
            current = None
    return done


def syntax_of(path: Path) -> str:
    meta = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta
    return str(meta.get("TransferSyntaxUID", ""))


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)


def send_all(port: int, files: list[Path]) -> None:
    """Every file by storescu, one run per transfer syntax family; all answered Success."""
    for syntax, flag in STORESCU_FLAGS.items():
        group = [f for f in files if syntax_of(f) == syntax]
        if group:
            proc = storescu(port, group, flag)
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out
            assert len(answered_success(out)) == len(group), out


# -- the whole way: modality -> receiver -> inbox -> watch -> database -------------------


def test_dcmtk_sends_to_the_receiver_and_watch_screens_every_instance(tmp_path, trained_model, dicom_dir):
    site = Site(tmp_path, f"sqlite:///{tmp_path / 'results.db'}", trained_model)
    receiver = Receiver(site.inbox, tmp_path / "receive.log")
    try:
        watch = site.start()
        echo = subprocess.run(
            [dcmtk("echoscu"), "-aec", "XRAY_SCREEN", "127.0.0.1", str(receiver.port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert echo.returncode == 0, echo.stdout + echo.stderr
        files = sorted(dicom_dir.glob("*.dcm"))
        send_all(receiver.port, files)
        uids = {uid_of(f) for f in files}
        wait_for(lambda: len(_handled(site)) == len(uids), 180, f"not all screened:\n{site.log()}")
        assert site.stop(watch) == 0
        assert receiver.stop() == 0
    finally:
        receiver.kill()
        site.close()
    handled = _handled(site)
    assert set(handled) == {f"{uid}.dcm" for uid in uids}
    assert set(handled.values()) <= {"screened", "out_of_scope"}, handled
    screened = {u for u in site.column(results.c.sop_instance_uid) if u}
    for uid in uids:  # a result row, or the gate's out_of_scope audit row
        assert uid in screened or handled[f"{uid}.dcm"] == "out_of_scope", uid
    log = receiver.log()
    assert len(re.findall(r"association from STORESCU at 127\.0\.0\.1:\d+: \d+ stored", log)) == 4
    assert "association from ECHOSCU" in log and "Traceback" not in log
    for f in files:  # no patient data in the log
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        for value in (ds.get("PatientName"), ds.get("PatientID")):
            assert not value or str(value) not in log


def _handled(site: Site) -> dict[str, str]:
    """Inbox file name -> outcome, for the files ``watch`` recorded."""
    engine = create_engine(site.db_url)
    with engine.connect() as conn:
        rows = conn.execute(select(audit_events.c.source_path, audit_events.c.outcome)).all()
    engine.dispose()
    return {Path(path).name: outcome for path, outcome in rows}


# -- SIGKILL mid-association -----------------------------------------------------------


def test_sigkill_mid_association_loses_nothing_answered_success(tmp_path, dicom_dir, receivers):
    rsna = sorted(dicom_dir.glob("00*.dcm"))
    originals = {uid_of(f): pydicom.dcmread(f).PixelData for f in rsna}
    files = rsna * 3  # 48 instances, about half a second of sending
    rng = random.Random(14)
    answered_total = 0
    for round_ in range(20):
        inbox = tmp_path / f"inbox{round_}"
        receiver = receivers(inbox, tmp_path / f"receive{round_}.log")
        sender = storescu(receiver.port, files, "-xy")
        time.sleep(rng.uniform(0.0, 0.6))
        receiver.kill()
        out, _ = sender.communicate(timeout=60)
        answered = Counter(uid_of(Path(f)) for f in answered_success(out))
        answered_total += sum(answered.values())
        kept = Counter()
        for path in inbox.iterdir():
            if path.name.startswith("."):  # a temporary file: hidden from watch, never answered
                continue
            uid = re.fullmatch(r"(.+?)(-\d+)?\.dcm", path.name).group(1)
            ds = pydicom.dcmread(path)  # complete and parseable, whatever the moment of the kill
            assert ds.SOPInstanceUID == uid and ds.PixelData == originals[uid], path
            kept[uid] += 1
        for uid, n in answered.items():
            assert kept[uid] >= n, f"round {round_}: {n} answered Success, {kept[uid]} in the inbox"
    assert answered_total > 0  # some rounds were killed after some Successes
    # The next start removes what a killed receiver left half-written.
    last = tmp_path / "inbox19"
    receiver = receivers(last, tmp_path / "restart.log")
    assert not [p for p in last.iterdir() if p.name.startswith(".receive-")]
    assert receiver.stop() == 0


# -- memory and disk ---------------------------------------------------------------------


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def _cr(pixel_bytes: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, generate_uid()
    ds.Modality = "CR"
    ds.Columns = 4000
    ds.Rows = pixel_bytes // 4000
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = b"\x80" * (ds.Rows * ds.Columns)
    return ds


def _store(port: int, datasets: list[Dataset]) -> list[int]:
    ae = AE(ae_title="TEST_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(Verification)
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="XRAY_SCREEN")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()
    return statuses


def test_an_instance_over_the_limit_is_refused_without_holding_it(tmp_path, receivers):
    receiver = receivers(tmp_path / "inbox", tmp_path / "receive.log", "--max-instance-bytes", "2000000")
    small = _cr(1_000_000)
    assert _store(receiver.port, [small]) == [0]
    before = _peak_rss_kib(receiver.proc.pid)
    huge = _cr(120_000_000)
    assert _store(receiver.port, [huge, _cr(500_000)]) == [0xA700, 0]
    grown_mib = (_peak_rss_kib(receiver.proc.pid) - before) / 1024
    assert grown_mib < 40, f"the receiver's peak memory grew by {grown_mib:.0f} MiB for a 120 MB instance"
    assert len(list((tmp_path / "inbox").glob("*.dcm"))) == 2
    assert "is over max_instance_bytes" in receiver.log()


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 1 MiB tmpfs (root only, like scripts/test: it fails, not skips, elsewhere; the
    ENOSPC path is also covered by tests/integration/test_receive.py, which injects the error)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here (run as root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", mount], check=False)


def test_a_full_disk_is_answered_out_of_resources(tmp_path, dicom_dir, receivers, tiny_disk):
    inbox = tiny_disk / "inbox"
    receiver = receivers(inbox, tmp_path / "receive.log")
    rsna = sorted(dicom_dir.glob("00*.dcm"))  # about 1.9 MB in all: the disk fills up halfway
    proc = storescu(receiver.port, rsna, "-xy")
    out, _ = proc.communicate(timeout=120)
    answered = answered_success(out)
    assert 0 < len(answered) < len(rsna), out
    assert "Received Store Response (Refused: OutOfResources)" in out, out
    for f in answered:
        ds = pydicom.dcmread(inbox / f"{uid_of(Path(f))}.dcm")
        assert ds.PixelData == pydicom.dcmread(f).PixelData
    assert not [p for p in inbox.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert "the inbox's disk is full" in receiver.log()
    assert _store(receiver.port, []) == []  # still answers (C-ECHO)
    assert receiver.stop() == 0


def test_settings_it_cannot_use_exit_78_with_the_reason(tmp_path, receivers):
    running = receivers(tmp_path / "inbox", tmp_path / "receive.log")
    for extra, reason in [
        (["--port", str(running.port)], "cannot listen on 127.0.0.1"),  # the port is taken
        (["--allow", "MODALITY1@not-an-address"], "is not an IP address"),
        (["--tls-cert", str(tmp_path / "missing.pem")], "TLS needs both"),
        (["--ae-title", "A_TITLE_FAR_TOO_LONG"], "must be a DICOM AE title"),
    ]:
        args = [EXE, "receive", "--inbox", tmp_path / "inbox", "--port", str(free_port()), *extra]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 78, done.stderr
        assert reason in done.stderr, done.stderr
    assert running.proc.poll() is None
