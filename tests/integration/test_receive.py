"""``worker.receive``: the Storage SCP in this process, pynetdicom as the sender.

Real DICOMs from ``dicom_dir`` go in over loopback and come out as ``<SOPInstanceUID>.dcm``
in the inbox, with the same data set. Then what a hostile or broken peer can do: garbage on
the port, a PDU of 4 GiB, an AE title not allowed, a SOP class or transfer syntax we do not
take, a data set that does not parse, a UID that would make a bad file name, an instance
over the size limit, a full disk, and associations that stall. Each gets its DICOM answer,
and the receiver answers a C-ECHO afterwards with nothing already received lost.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    JPEG2000MC,
    MPEG2MPML,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

from worker.config import ReceiveSettings
from worker.receive import Receiver, store
from worker.receive.limits import BoundedBuffer
from worker.receive.scp import TRANSFER_SYNTAXES
from worker.receive.store import InboxWriter

SC = "1.2.840.10008.5.1.4.1.1.7"


# -- helpers ---------------------------------------------------------------------------


@contextmanager
def receivers(base: ReceiveSettings, folder: Path) -> Iterator[Callable[..., Receiver]]:
    """Start receivers with ``base`` and the settings given, into ``folder`` unless told; all
    are stopped at the end."""
    running: list[tuple[Receiver, threading.Thread]] = []

    def make(inbox: Path | None = None, **settings: object) -> Receiver:
        writer = InboxWriter(inbox or folder)
        writer.prepare()
        receiver = Receiver(dataclasses.replace(base, **settings), writer)
        receiver.start()
        thread = threading.Thread(target=receiver.run, daemon=True)
        thread.start()
        running.append((receiver, thread))
        return receiver

    try:
        yield make
    finally:
        for receiver, thread in running:
            receiver.stop()
            thread.join(30)
            assert not thread.is_alive()


@pytest.fixture
def make_receiver(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    """Start a receiver on a free port of 127.0.0.1 (``port=0``); all are stopped at the end."""
    base = ReceiveSettings(port=0, secondary_capture=True, association_timeout=5, idle_timeout=5)
    with receivers(base, tmp_path / "inbox") as make:
        yield make


def sender(title: str = "TEST_SCU", contexts: list[tuple[str, list[str]]] | None = None) -> AE:
    ae = AE(ae_title=title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    for sop, syntaxes in contexts or []:
        ae.add_requested_context(sop, syntaxes)
    return ae


def read(path: Path) -> Dataset:
    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:  # CR-MONO1-10-chest.dcm: no File Meta
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def echo(receiver: Receiver, title: str = "TEST_SCU") -> int:
    assoc = sender(title).associate(*receiver.address, ae_title="XRAY_SCREEN")
    assert assoc.is_established, "the receiver did not accept a C-ECHO association"
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status)


def store_all(receiver: Receiver, datasets: list[Dataset], title: str = "TEST_SCU") -> list[int]:
    contexts = sorted({(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets})
    assoc = sender(title, [(sop, [ts]) for sop, ts in contexts]).associate(
        *receiver.address, ae_title="XRAY_SCREEN"
    )
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def send_raw(
    receiver: Receiver, payload: bytes, *, uid: str, sop: str = ComputedRadiographyImageStorage
) -> int:
    """A C-STORE whose data set is ``payload``, sent as is (no encoding by pynetdicom)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    shell = Dataset()
    shell.file_meta = meta
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"raw-{os.getpid()}-{time.monotonic_ns()}.dcm"
    shell.save_as(path, enforce_file_format=True)
    with path.open("ab") as fh:
        fh.write(payload)
    assoc = sender(contexts=[(sop, [ExplicitVRLittleEndian])]).associate(
        *receiver.address, ae_title="XRAY_SCREEN"
    )
    old, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        status = int(assoc.send_c_store(path).Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        assoc.release()
        path.unlink()
    return status


def cr_image(pixels: int = 64 * 64, uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = uid or generate_uid()
    ds.Modality = "CR"
    ds.Rows, ds.Columns = -(-pixels // 1000), min(pixels, 1000)
    pixels = ds.Rows * ds.Columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * (pixels // 256) + b"\0" * (pixels % 256)
    return ds


def inbox_files(receiver: Receiver) -> list[Path]:
    return sorted(receiver.writer.folder.iterdir())


# -- what a modality sends -------------------------------------------------------------


def test_c_echo(make_receiver):
    assert echo(make_receiver()) == 0x0000


def test_real_dicoms_land_in_the_inbox_as_their_uid(make_receiver, dicom_dir: Path):
    receiver = make_receiver()
    originals = [read(p) for p in sorted(dicom_dir.glob("*.dcm"))]
    assert len(originals) == 19
    assert store_all(receiver, originals) == [0x0000] * 19
    files = inbox_files(receiver)
    assert [p.name for p in files] == sorted(f"{ds.SOPInstanceUID}.dcm" for ds in originals)
    for original in originals:
        path = receiver.writer.folder / f"{original.SOPInstanceUID}.dcm"
        got = pydicom.dcmread(path)  # a real DICOM file: preamble, File Meta, data set
        assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert got.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
        assert got.SOPClassUID == original.SOPClassUID
        assert got.PixelData == original.PixelData
        assert _differences(got, original) == [], original.SOPInstanceUID  # every element
        assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _differences(a: Dataset, b: Dataset) -> list[str]:
    """Tags whose values differ, but group lengths (retired, which pydicom drops when sending)."""
    tags = {e.tag for e in a if e.tag.element} | {e.tag for e in b if e.tag.element}
    return [str(t) for t in sorted(tags) if t not in a or t not in b or a[t].value != b[t].value]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_every_accepted_transfer_syntax_has_a_decoder_and_others_are_not_accepted(make_receiver):
    for syntax in TRANSFER_SYNTAXES:
        assert get_decoder(syntax).is_available, syntax.name
    receiver = make_receiver()
    ae = sender(contexts=[(ComputedRadiographyImageStorage, [ts]) for ts in TRANSFER_SYNTAXES])
    ae.add_requested_context(ComputedRadiographyImageStorage, [JPEG2000MC])
    ae.add_requested_context(ComputedRadiographyImageStorage, [MPEG2MPML])
    assoc = ae.associate(*receiver.address, ae_title="XRAY_SCREEN")
    accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts if cx.abstract_syntax != Verification}
    assoc.release()
    assert accepted == set(TRANSFER_SYNTAXES)


def test_the_same_instance_twice_is_kept_twice_under_a_suffix(make_receiver, dicom_dir: Path):
    receiver = make_receiver()
    ds = read(dicom_dir / "WG04_RG1_JLSN.dcm")
    assert store_all(receiver, [ds, ds]) == [0, 0]
    uid = ds.SOPInstanceUID
    assert [p.name for p in inbox_files(receiver)] == [f"{uid}-1.dcm", f"{uid}.dcm"]
    first, second = (p.read_bytes() for p in inbox_files(receiver))
    assert first == second  # the same content: watch files the second as a duplicate


def test_secondary_capture_only_when_enabled(make_receiver, dicom_dir: Path):
    receiver = make_receiver(secondary_capture=False)
    ds = read(next(dicom_dir.glob("00*.dcm")))
    assert ds.SOPClassUID == SC
    assoc = sender(contexts=[(SC, [ds.file_meta.TransferSyntaxUID])]).associate(
        *receiver.address, ae_title="XRAY_SCREEN"
    )
    assert assoc.is_established and not [c for c in assoc.accepted_contexts if c.abstract_syntax == SC]
    assoc.release()
    assert echo(receiver) == 0


# -- refusals --------------------------------------------------------------------------


def test_calling_ae_titles_and_their_addresses(make_receiver):
    receiver = make_receiver(allowed_aets=("MODALITY1", "PACS@127.0.0.1", "CT2@10.9.9.9"))
    assert echo(receiver, "MODALITY1") == 0
    assert echo(receiver, "PACS") == 0
    for title in ("OTHER", "CT2"):  # unknown; known but from another address
        assoc = sender(title).associate(*receiver.address, ae_title="XRAY_SCREEN")
        assert assoc.is_rejected and not assoc.is_established, title
        _close(assoc)
    assert echo(receiver, "MODALITY1") == 0


def test_a_sop_class_we_do_not_screen_gets_no_presentation_context(make_receiver, caplog):
    receiver = make_receiver()
    ct = cr_image()
    ct.SOPClassUID = CTImageStorage
    assoc = sender(contexts=[(CTImageStorage, [ExplicitVRLittleEndian])]).associate(
        *receiver.address, ae_title="XRAY_SCREEN"
    )
    assert assoc.is_established
    with pytest.raises(ValueError, match="No presentation context"):
        assoc.send_c_store(ct)
    assoc.release()
    assert echo(receiver) == 0 and inbox_files(receiver) == []
    _wait(lambda: "presentation contexts refused: CT Image Storage" in caplog.text)


def test_a_data_set_that_does_not_parse_is_refused(make_receiver):
    receiver = make_receiver()
    good = cr_image()
    assert store_all(receiver, [good]) == [0]
    uid = generate_uid()
    # (0008,0018) UI with a length running past the end of the data.
    broken = struct.pack("<HH2sH", 0x0008, 0x0018, b"UI", 0xFFF0) + b"1.2.3"
    assert send_raw(receiver, broken, uid=uid) == 0xC000
    uid_element = struct.pack("<HH2sH", 0x0008, 0x0018, b"UI", 6) + b"1.2.3\0"
    never_ends = uid_element + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + b"x" * 100
    assert send_raw(receiver, never_ends, uid=uid) == 0xC000
    assert send_raw(receiver, b"\x08\x00\x18\x00ZZ\x05\x001.2.3", uid=uid) == 0xC000  # unknown VR
    no_uid = Dataset()
    no_uid.Modality = "CR"
    assert send_raw(receiver, _encoded(no_uid), uid=uid) == 0xC000
    assert [p.name for p in inbox_files(receiver)] == [f"{good.SOPInstanceUID}.dcm"]
    assert echo(receiver) == 0


@pytest.mark.parametrize(
    "uid", ["../../etc/passwd", "1.2.3/4", "1.2.abc", ".1.2", "1." + "2" * 70, "1.2..3", "1.2.3\n4"]
)
def test_a_uid_that_is_not_a_uid_never_becomes_a_file_name(make_receiver, uid: str):
    receiver = make_receiver()
    ds = cr_image()
    with warnings.catch_warnings():  # pydicom warns of an invalid UI value; this test sends one
        warnings.simplefilter("ignore")
        ds.SOPInstanceUID = uid
        payload = _encoded(ds)
    assert send_raw(receiver, payload, uid="1.2.3") == 0xC000
    assert inbox_files(receiver) == []
    assert not (receiver.writer.folder.parent / "etc").exists()


def _encoded(ds: Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def test_an_instance_over_the_size_limit_is_refused_and_the_association_goes_on(make_receiver):
    receiver = make_receiver(max_instance_bytes=100_000)
    big, small = cr_image(400_000), cr_image(10_000)
    assert store_all(receiver, [big, small]) == [0xA700, 0]
    assert [p.name for p in inbox_files(receiver)] == [f"{small.SOPInstanceUID}.dcm"]
    assert echo(receiver) == 0


def test_the_bounded_buffer_keeps_nothing_past_its_limit():
    buffer = BoundedBuffer(1000)
    buffer.write(b"x" * 600)
    assert not buffer.overflowed and buffer.getvalue() == b"x" * 600
    for _ in range(1000):
        buffer.write(memoryview(b"y" * 1_000_000))
    assert buffer.overflowed and buffer.getbuffer().nbytes == 0
    assert buffer.received == 600 + 1000 * 1_000_000


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_a_full_disk_is_refused_as_out_of_resources(make_receiver, monkeypatch, code: int, caplog):
    receiver = make_receiver()
    first = cr_image()
    assert store_all(receiver, [first]) == [0]
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if Path(f"/proc/self/fd/{fd}").readlink().name.startswith(store.TEMP_PREFIX):
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(store.os, "fsync", failing_fsync)
    assert store_all(receiver, [cr_image()]) == [0xA700]
    monkeypatch.setattr(store.os, "fsync", real_fsync)
    # The temporary file is gone; what was received before is intact; the disk has room again.
    assert [p.name for p in inbox_files(receiver)] == [f"{first.SOPInstanceUID}.dcm"]
    assert pydicom.dcmread(inbox_files(receiver)[0]).PixelData == first.PixelData
    assert store_all(receiver, [cr_image()]) == [0]
    assert echo(receiver) == 0
    if code != errno.EROFS:
        assert "the inbox's disk is full" in caplog.text


# -- hostile and broken peers ------------------------------------------------------------


def _connect(receiver: Receiver) -> socket.socket:
    sock = socket.create_connection(receiver.address, timeout=15)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the receiver closes the connection (an A-ABORT or a reset may come first)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()
    return False


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        random.Random(14).randbytes(4096),
        b"\x01\x00" + struct.pack(">L", 0xFFFFFFF0) + b"\0" * 1000,  # an association request of 4 GiB
        b"\x04\x00" + struct.pack(">L", 0x7FFFFFFF) + b"\0" * 1000,  # P-DATA before any association
    ],
    ids=["http", "random", "huge-associate", "pdata-first"],
)
def test_garbage_on_the_port_is_dropped(make_receiver, garbage: bytes):
    receiver = make_receiver(association_timeout=1)
    stored = cr_image()
    assert store_all(receiver, [stored]) == [0]
    sock = _connect(receiver)
    sock.sendall(garbage)
    assert _closed_within(sock, 10)
    assert echo(receiver) == 0
    assert [p.name for p in inbox_files(receiver)] == [f"{stored.SOPInstanceUID}.dcm"]


def test_a_pdu_over_the_limit_ends_the_association_without_reading_it(make_receiver, dicom_dir):
    receiver = make_receiver(max_pdu=16_384)
    ae = sender(contexts=[(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])])
    assoc = ae.associate(*receiver.address, ae_title="XRAY_SCREEN")
    assert assoc.is_established
    # A P-DATA-TF PDU that claims 2 GiB: refused from its header, not read into memory.
    assoc.dul.socket.send(b"\x04\x00" + struct.pack(">L", 0x7FFFFFFF) + b"\0" * 64)
    _wait(lambda: not assoc.is_established or assoc.is_aborted, 10)
    assoc.abort()
    _close(assoc)
    assert echo(receiver) == 0


@pytest.mark.parametrize("where", ["before-request", "mid-request", "after-accept", "mid-instance"])
def test_a_stalled_association_is_ended_by_the_timeouts(make_receiver, where: str):
    receiver = make_receiver(association_timeout=1, idle_timeout=1)
    stored = cr_image()
    assert store_all(receiver, [stored]) == [0]
    if where in ("after-accept", "mid-instance"):
        assoc = sender(contexts=[(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])]).associate(
            *receiver.address, ae_title="XRAY_SCREEN"
        )
        assert assoc.is_established
        if where == "mid-instance":  # 100 bytes of a P-DATA PDU of 8000, then nothing
            assoc.dul.socket.send(b"\x04\x00" + struct.pack(">L", 8000) + b"\0" * 100)
        _wait(lambda: not assoc.is_established, 10)  # the receiver gave up on it
        _close(assoc)
    else:
        sock = _connect(receiver)
        if where == "mid-request":  # 2 bytes of an association request of 500
            sock.sendall(b"\x01\x00" + struct.pack(">L", 500) + b"\x00\x01")
        assert _closed_within(sock, 10), where
    assert echo(receiver) == 0
    assert [p.name for p in inbox_files(receiver)] == [f"{stored.SOPInstanceUID}.dcm"]


def test_leftover_temporary_files_of_a_dead_receiver_are_removed(tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    stale = inbox / f"{store.TEMP_PREFIX}{host}-{int(dead.stdout)}-abc{store.TEMP_SUFFIX}"
    live = inbox / f"{store.TEMP_PREFIX}{host}-{os.getpid()}-abc{store.TEMP_SUFFIX}"
    other_host = inbox / f"{store.TEMP_PREFIX}elsewhere-1-abc{store.TEMP_SUFFIX}"
    for path in (stale, live, other_host):
        path.write_bytes(b"partial")
    InboxWriter(inbox).prepare()
    assert sorted(p.name for p in inbox.iterdir()) == sorted([live.name, other_host.name])


def test_the_receiver_loads_no_model():
    """It only writes files: starting it must not import torch or fastai (a second, not ten)."""
    code = (
        "import sys; from worker.cli.main import cli; from worker.config import load_settings;"
        "from worker.receive import open_receiver;"
        "import tempfile, pathlib; d = pathlib.Path(tempfile.mkdtemp());"
        "r = open_receiver(load_settings(None, environ={}, overrides={'inbox.path': d,"
        " 'receive.port': 1}));"
        "loaded = {'torch', 'fastai', 'torchvision'} & set(sys.modules); assert not loaded, loaded"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_tls_with_client_certificates(make_receiver, tmp_path: Path):
    import ssl

    ca, server, client = (_make_cert(tmp_path, name) for name in ("ca", "server", "client"))
    receiver = make_receiver(tls_cert=str(server[0]), tls_key=str(server[1]), tls_ca=str(ca[0]))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca[0]))
    context.check_hostname = False
    context.load_cert_chain(*client)
    ae = sender()
    assoc = ae.associate(*receiver.address, ae_title="XRAY_SCREEN", tls_args=(context, None))
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    without_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca[0]))
    without_cert.check_hostname = False
    refused = sender().associate(*receiver.address, tls_args=(without_cert, None))
    plain = sender().associate(*receiver.address, ae_title="XRAY_SCREEN")
    assert not refused.is_established and not plain.is_established
    _close(refused, plain)


def _make_cert(folder: Path, name: str) -> tuple[Path, Path]:
    """A key and certificate; ``ca`` self-signed, the others signed by it (openssl)."""
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    subj = ["-subj", f"/CN={name}"]
    if name == "ca":
        cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        subprocess.run([*cmd, "-keyout", key, "-out", cert, *subj], check=True, capture_output=True)
        return cert, key
    csr = folder / f"{name}.csr"
    cmd = ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, *subj]
    subprocess.run(cmd, check=True, capture_output=True)
    sign = ["openssl", "x509", "-req", "-in", csr, "-CA", folder / "ca.pem", "-CAkey", folder / "ca.key"]
    subprocess.run([*sign, "-CAcreateserial", "-days", "2", "-out", cert], check=True, capture_output=True)
    return cert, key


def _close(*associations: object) -> None:
    """pynetdicom leaves a failed association's socket open: close it (ResourceWarning)."""
    for assoc in associations:
        sock = assoc.dul.socket  # type: ignore[attr-defined]
        if sock is not None and sock.socket is not None:
            sock.socket.close()


def _wait(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_allowed_peers_parse_and_match():
    from worker.errors import ConfigError
    from worker.receive.peers import AllowedPeers

    peers = AllowedPeers.parse(["MODALITY1@10.0.0.5", "MODALITY1@10.0.0.6", "PACS", " CT2 @ ::1 "])
    assert peers.allows("MODALITY1", "10.0.0.5") and peers.allows("MODALITY1 ", "::ffff:10.0.0.6")
    assert not peers.allows("MODALITY1", "10.0.0.7") and not peers.allows("modality1", "10.0.0.5")
    assert peers.allows("PACS", "192.168.1.1") and peers.allows("CT2", "::1")
    assert AllowedPeers.parse([]).allows("ANYONE", "1.2.3.4")
    for bad in ["MODALITY1@host.example", "@10.0.0.5", "A" * 17, "BACK\\SLASH"]:
        with pytest.raises(ConfigError, match=r"\[receive\] allowed_aets"):
            AllowedPeers.parse([bad])
