"""The gate: which files the model may judge at all.

A screening aid must say so when a film is outside what it knows, instead of giving it a
confident verdict. The gate runs for every file, in two halves:

1. **before inference**, on the DICOM attributes (``[gate]`` settings): Modality (CR and DX
   by default), BodyPartExamined (CHEST) and ViewPosition (PA, AP), the last two only when
   present unless ``missing_passes = false``. A PNG or JPEG has no attributes and passes;
2. **with inference**, on the image itself: the model's own image gate
   (``worker.model.gate.ImageGate``, fitted on its training films and stored with it) scores
   the penultimate features the forward pass computes anyway; a score above its limit is
   refused.

A refused file is neither a failure nor a verdict: outcome ``out_of_scope`` with the reason
(``Modality MR is not screened``, ``unlike the films this model was trained on: distance 1.35
from them, over the limit 1.00``), filed under ``processed/OUT_OF_SCOPE/``. The predictor asks
this object (``before``, ``image_scores``, ``after``); it holds no model and no decoder, only
their outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.outcome import unlike_reason


@dataclass(frozen=True)
class Gate:
    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST",)
    views: tuple[str, ...] = ("PA", "AP")
    missing_passes: bool = True
    image: Any = None  # the model's ``ImageGate`` (``scores(features)``, ``limit``), or None

    @classmethod
    def from_settings(cls, settings: Any, image: Any = None) -> Gate | None:
        """The gate of ``[gate]`` settings (None when disabled); ``image`` is used only with
        ``image_check``."""
        if not settings.enabled:
            return None
        return cls(
            tuple(m.upper() for m in settings.modalities),
            tuple(b.upper() for b in settings.body_parts),
            tuple(v.upper() for v in settings.views),
            settings.missing_passes,
            image if settings.image_check else None,
        )

    def before(self, decoded: Any) -> str | None:
        """Why a decoded file may not be screened, from its DICOM attributes; None: it may."""
        facts = getattr(decoded, "dicom", None)
        if facts is None:
            return None
        checks = (
            ("Modality", facts.modality, self.modalities, "is not screened"),
            ("BodyPartExamined", facts.body_part, self.body_parts, "is not screened"),
            ("ViewPosition", facts.view_position, self.views, "is not screened"),
        )
        for name, value, allowed, what in checks:
            if not allowed:
                continue
            if value is None or not str(value).strip():
                if not self.missing_passes:
                    return f"no {name}: a file without it is not screened ([gate] missing_passes)"
                continue
            if str(value).strip().upper() not in allowed:
                return f"{name} {str(value).strip()} {what}"
        return None

    def image_scores(self, features: Any) -> Any:
        """The image gate's scores for a batch's features (N x D), or None without one."""
        if self.image is None or features is None:
            return None
        return self.image.scores(features)  # features by layer (N x D each)

    def after(self, score: float | None) -> str | None:
        """Why an image unlike the training films may not get a verdict; None: it may."""
        if score is None or self.image is None or score <= self.image.limit:
            return None
        return unlike_reason(score, self.image.limit)
