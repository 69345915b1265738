"""The facts of one screening result (``worker.pacs.objects.Screening``) for the tests of what a
result becomes: the RIS's ORU (tests/unit/test_oru.py), the EHR's Bundle (tests/unit/test_fhir.py)."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from worker.pacs.objects import Screening

MODEL_SHA = "ab" * 32


def screening(positive: bool = True, **kw: Any) -> Screening:
    """A positive (P 0.8731) or a negative (P 0.02) at threshold 0.1439; ``kw`` replaces any field."""
    values: dict[str, Any] = dict(
        positive=positive,
        probability=0.8731 if positive else 0.02,
        threshold=0.1439,
        model_name="pneumonia-resnet18",
        model_version="2026.12",
        model_sha256=MODEL_SHA,
        site_profile="kermany",
    )
    values.update(kw)
    return Screening(**values)


def header(defaults: dict[str, Any], **values: Any) -> Dataset:
    """A source header: ``defaults`` with ``values`` over them (attributes by keyword)."""
    ds = Dataset()
    for key, value in {**defaults, **values}.items():
        setattr(ds, key, value)
    return ds
