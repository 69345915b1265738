"""PACS delivery throughput: the outbox to a real Orthanc over loopback, one run.

Queues N objects (the real DICOMs of ../shared/data/dicom re-stamped with new UIDs, and small
Secondary Captures) in a fresh SQLite outbox, starts Orthanc on free loopback ports, and
times ``Sender.step()`` until nothing is due: objects/s and MB/s, per kind of object, with
the batch size given. Needs Orthanc (apt-get install orthanc).

    .venv/bin/python bench/pacs_delivery.py --copies 5 --batch-size 50
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "e2e"), str(ROOT / "tests" / "support")]

from pydicom.uid import generate_uid  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from test_pacs_orthanc import Orthanc, database, fill, restamped, secondary_capture  # noqa: E402

from worker.config import PacsDestination, PacsSettings  # noqa: E402
from worker.db.schema import outbox as outbox_table  # noqa: E402
from worker.pacs.sender import Sender  # noqa: E402


def run(name: str, payloads: list[bytes], batch_size: int, folder: Path) -> None:
    server = Orthanc(folder / f"orthanc-{name}")
    server.start()
    try:
        (folder / name).mkdir()
        _, engine = database(folder / name)
        fill(engine, payloads)
        destination = PacsDestination("orthanc", "ORTHANC", "127.0.0.1", server.dicom_port)
        sender = Sender(PacsSettings(destinations=(destination,), batch_size=batch_size), engine)
        started = time.perf_counter()
        while sender.step():
            pass
        seconds = time.perf_counter() - started
        with engine.connect() as conn:
            delivered = conn.execute(
                select(func.count()).select_from(outbox_table).where(outbox_table.c.status == "delivered")
            ).scalar_one()
        stored = len(server.sop_instance_uids())
    finally:
        server.stop()
    megabytes = sum(len(p) for p in payloads) / 1e6
    print(
        f"{name:>14}: {len(payloads)} objects, {megabytes:.1f} MB, batch {batch_size}: {seconds:.2f} s, "
        f"{len(payloads) / seconds:.1f} objects/s, {megabytes / seconds:.2f} MB/s "
        f"(delivered {delivered}, in Orthanc {stored})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dicom-dir", type=Path, default=ROOT.parent / "shared" / "data" / "dicom")
    parser.add_argument("--copies", type=int, default=5, help="copies of each real DICOM")
    parser.add_argument("--small", type=int, default=200, help="small Secondary Captures")
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run("real DICOMs", restamped(args.dicom_dir, args.copies), args.batch_size, folder)
        run(
            "small SCs",
            [secondary_capture(generate_uid()) for _ in range(args.small)],
            args.batch_size,
            folder,
        )


if __name__ == "__main__":
    main()
