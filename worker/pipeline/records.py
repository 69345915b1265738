"""Turning a prediction into the database's result record (shared by watch and scan)."""

from __future__ import annotations

from datetime import datetime

from worker.answers import Prediction
from worker.db.store import ResultRecord
from worker.pipeline.ports import Provenance


def result_record(
    predictor: Provenance,
    prediction: Prediction,
    content_sha256: str,
    *,
    queued_at: datetime | None,
    started_at: datetime,
    finished_at: datetime,
    heatmap_path: str | None = None,
) -> ResultRecord:
    """What ``predictor``'s model said about one image (a ``Prediction``), with the image's facts.

    ``predictor`` is what screened it: a ``Predictor``, or anything with its ``model``,
    ``threshold`` and ``device_name``."""
    model, decoded = predictor.model, prediction.decoded
    facts = decoded.dicom
    return ResultRecord(
        content_sha256=content_sha256,
        label=prediction.label,
        positive_class=model.positive_class,
        positive_probability=prediction.positive_probability,
        probabilities=prediction.probabilities,
        threshold=predictor.threshold or None,
        model_name=model.name,
        model_version=model.version,
        model_sha256=model.sha256,
        preprocessing=model.preprocessing.version,
        device=predictor.device_name,
        queued_at=queued_at,
        started_at=started_at,
        finished_at=finished_at,
        inference_ms=prediction.infer_ms,
        image_format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        sop_instance_uid=facts.sop_instance_uid if facts else None,
        study_instance_uid=facts.study_instance_uid if facts else None,
        series_instance_uid=facts.series_instance_uid if facts else None,
        modality=facts.modality if facts else None,
        accession_number=facts.accession_number if facts else None,
        patient_id=facts.patient_id if facts else None,
        gate_score=prediction.gate_score,
        site_profile=(model.metadata.get("site_profile") or {}).get("name"),
        heatmap_path=heatmap_path,
    )
