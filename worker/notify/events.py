"""The pipeline's points as notification events: ``positive`` and ``failure`` from each
committed batch, ``started`` and ``stopped`` from the daemon (``worker/pipeline/observe.py``).

- ``positive``: a file the model screened (not a duplicate of content it already judged)
  with the positive label;
- ``failure``: a file that failed for good (recorded as ``failed``; a file the daemon will
  read again is not one yet).

Each event's data names the file by identifiers and paths only (see ``payload.py``).
"""

from __future__ import annotations

import socket
from typing import Any

from worker.outcome import Outcome
from worker.pipeline.observe import Committed, Observer


class NotifyObserver(Observer):
    """Publishes the events of a run to ``dispatcher`` (a ``Dispatcher``), never waiting."""

    def __init__(self, dispatcher: Any, *, worker: str = "", model: Any = None):
        self.dispatcher = dispatcher
        self.worker = worker or socket.gethostname()
        self.model = model  # the loaded model: its name and SHA-256 in started/stopped

    def started(self) -> None:
        self.dispatcher.publish("started", self._process())

    def stopped(self) -> None:
        self.dispatcher.publish("stopped", self._process())

    def committed(self, batch: Committed) -> None:
        positives, failures = self.dispatcher.wants("positive"), self.dispatcher.wants("failure")
        if not (positives or failures):
            return
        for item in batch.items:
            if positives and item.outcome is Outcome.SCREENED and item.positive:
                self.dispatcher.publish("positive", item_data(item))
            elif failures and item.outcome is Outcome.FAILED:
                self.dispatcher.publish("failure", item_data(item))

    def _process(self) -> dict[str, Any]:
        data: dict[str, Any] = {"worker": self.worker}
        if self.model is not None:
            data["model"] = {"name": self.model.name, "sha256": self.model.sha256}
        return data


def item_data(item: Any) -> dict[str, Any]:
    """What an event says of one file: its identifiers, paths and verdict (or reason).
    ``patient_id`` and ``accession_number`` ride along for ``include_patient_data``; the
    envelope removes them otherwise (``payload.scrub``)."""
    data: dict[str, Any] = {
        "audit_event_id": str(item.event_id),
        "outcome": str(item.outcome),
        "path": item.name,
        "destination": item.destination,
        "content_sha256": item.sha256,
    }
    if item.outcome is Outcome.FAILED:
        data["reason"] = item.reason
    else:
        data["label"] = item.label
        data["positive_probability"] = item.positive_probability
    facts = getattr(getattr(item.prediction, "decoded", None), "dicom", None)
    if facts is not None:
        data["sop_instance_uid"] = facts.sop_instance_uid
        data["study_instance_uid"] = facts.study_instance_uid
        data["patient_id"] = facts.patient_id
        data["accession_number"] = facts.accession_number
    return data
