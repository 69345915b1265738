"""The RIS and EHR sink: each screened DICOM's result as an HL7 ORU^R01 and a FHIR Bundle,
queued with the result (issue 28).

``RisOutputs`` is a ``Committer`` ``outputs`` hook, like ``PacsOutputs`` (``worker/sinks/pacs.py``):
for each screened DICOM input it returns one outbox row per ``[[hl7.destinations]]`` (kind
``hl7``, the ORU as UTF-8: ``worker/ris/oru.py``) and one per ``[[fhir.destinations]]`` (kind
``fhir``, the transaction Bundle as JSON: ``worker/ris/fhir.py``), written in the transaction
that stores the result; ``xray-worker send`` delivers them (``worker/ris/mllp.py``,
``worker/ris/fhir_client.py``).

- A DICOM input only: a PNG or JPEG has no patient, order or study to report on.
- A row's id (the outbox's ``sop_instance_uid`` column) derives from (source SOP Instance UID,
  model SHA-256, kind), and so does the ORU's message control id (MSH-10): the same result
  queued again is the same row, so a rerun queues nothing new, and a resend carries the same
  control id (the receiver's key to drop a duplicate).
- The worklist priority is ``[worklist] priority_positive`` or ``priority_negative``.
- A file whose messages cannot be built (a header without its UIDs, an error of ours) is logged
  and gets its result without them, as with the PACS objects.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from worker.config import FhirDestination, Hl7Destination, WorklistSettings
from worker.db.outbox import OutboxItem
from worker.db.store import ResultRecord
from worker.pacs.objects import Screening
from worker.pacs.uids import instance_uid
from worker.ris.fhir import build_bundle, bundle_model
from worker.ris.oru import Endpoint, build_oru
from worker.sinks.pacs import DICOM, contained, read_header

log = logging.getLogger(__name__)
HL7, FHIR = "hl7", "fhir"  # the outbox rows' kinds
FHIR_JSON = "application/fhir+json"


def control_id(row_uid: str) -> str:
    """An ORU's message control id (MSH-10, at most 20 characters) from its row's id."""
    return "XRS" + hashlib.sha256(row_uid.encode("ascii")).hexdigest()[:17].upper()


class RisOutputs:
    """The outbox rows of a batch's screened results for ``hl7`` and ``fhir`` destinations.

    ``ConfigError`` at once when a FHIR destination is configured and fhir.resources is missing
    (the ``ehr`` extra), rather than at the first result.
    """

    def __init__(
        self,
        hl7: Sequence[Hl7Destination],
        fhir: Sequence[FhirDestination],
        worklist: WorklistSettings,
        *,
        header: Callable[[Path], Dataset] = read_header,
    ):
        self.hl7, self.fhir, self.worklist, self.header = tuple(hl7), tuple(fhir), worklist, header
        if self.fhir:
            bundle_model()

    def __bool__(self) -> bool:
        return bool(self.hl7 or self.fhir)

    def __call__(self, screened: Sequence[tuple[Any, ResultRecord]]) -> list[OutboxItem]:
        """The outbox rows of a batch's screened items (``(item, result)`` pairs)."""
        dicoms = [(item, result) for item, result in screened if result.image_format == DICOM]
        return contained(dicoms, self.messages, "RIS/EHR messages")

    def priority(self, screening: Screening) -> str:
        w = self.worklist
        return w.priority_positive if screening.positive else w.priority_negative

    def messages(self, item: Any, result: ResultRecord) -> list[OutboxItem]:
        """One item's rows: an ORU per HL7 destination, a Bundle per FHIR destination."""
        try:
            source = self.header(item.path)
        except (InvalidDicomError, ValueError) as exc:
            log.warning("%s: no RIS/EHR messages: its header cannot be read again (%s)", item.name, exc)
            return []
        missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID") if not source.get(k)]
        if missing:
            log.warning("%s: no RIS/EHR messages: the file has no %s", item.name, ", ".join(missing))
            return []
        screening = Screening.from_result(result)
        priority = self.priority(screening)
        created = result.finished_at
        sop, study = str(source.SOPInstanceUID), str(source.StudyInstanceUID)

        def row(destination: str, kind: str, uid: str, payload: bytes) -> OutboxItem:
            return OutboxItem(
                destination=destination,
                kind=kind,
                sop_class_uid="",  # not a DICOM object
                sop_instance_uid=uid,
                study_instance_uid=study,
                payload=payload,
                result_key=(result.model_sha256, result.content_sha256),
            )

        rows = []
        hl7_uid = instance_uid(sop, screening.model_sha256, HL7)
        for d in self.hl7:
            oru = build_oru(
                source,
                screening,
                created,
                sender=Endpoint(d.sending_application, d.sending_facility),
                receiver=Endpoint(d.receiving_application, d.receiving_facility),
                control_id=control_id(hl7_uid),
                priority=priority,
            )
            rows.append(row(d.name, HL7, hl7_uid, oru.encode("utf-8")))
        if self.fhir:
            bundle = build_bundle(source, screening, created, priority=priority)
            payload = json.dumps(bundle, ensure_ascii=False).encode("utf-8")
            fhir_uid = instance_uid(sop, screening.model_sha256, FHIR)
            rows += [row(d.name, FHIR, fhir_uid, payload) for d in self.fhir]
        return rows
