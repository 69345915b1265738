"""The site baseline: what the model's answers looked like on the site's labelled sample, for
drift monitoring (``xray-worker report drift --reference site-profile``, docs/drift.md).

``site-check`` writes two into its output folder: ``site_baseline.json`` (P as the model
reports it today, at its stored threshold) and ``site_baseline-stored.json`` (P and threshold
as they will be once ``--store`` has written the calibration and threshold fitted here).
``--store`` puts the second beside the model file, with the new file's SHA-256: the worker
reads it from there (``worker.drift.sample.load_baseline``) and never needs the sample.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from worker.drift.sample import BASELINE_FILE, baseline, baseline_path

STORED_FILE = "site_baseline-stored.json"


def write_baselines(
    out_dir: Path,
    report: dict[str, Any],
    ev: Any,
    p_reported: np.ndarray,
    margins: np.ndarray,
    refusals: list[bool] | None,
    stored_threshold: float,
    in_use: Any,
) -> None:
    """Both baselines of a site check (see the module's docstring) into ``out_dir``."""
    from worker.model.calibration import Calibration

    refused = np.array(refusals if refusals is not None else [False] * len(ev.predictions), dtype=bool)
    kept = ~refused
    images = [(p.decoded.format, p.decoded.width, p.decoded.height) for p in ev.predictions]
    common = {
        "site": report["site"],
        "sample": report["sample"],
        "checked_on": report["checked_on"],
        "model_name": report["model_name"],
        "images": [im for im, k in zip(images, kept, strict=True) if k],
        "refused": int(refused.sum()),
        "failed": len(ev.failures),
    }
    today = baseline(
        **common,
        model_sha256=report["model_sha256"],
        threshold=stored_threshold,
        calibration=in_use.method if in_use is not None else None,
        p=p_reported[kept],
    )
    fitted = report["calibration"].get("fitted")
    if fitted:
        p_stored = Calibration.from_metadata(fitted).positive(margins)
        threshold, method = fitted["threshold"], fitted["method"]
    else:  # --store keeps the model's own P (no calibration) and moves the threshold
        p_stored = margins_to_p(margins)
        threshold, method = report["at_target_sensitivity"]["threshold"], None
    stored = baseline(
        **common,
        model_sha256="",  # known once --store has written the model
        threshold=threshold,
        calibration=method,
        p=p_stored[kept],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(out_dir / BASELINE_FILE, today)
    _write(out_dir / STORED_FILE, stored)


def margins_to_p(margins: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(margins, dtype=np.float64)))


def store_baseline(out_dir: Path, model_path: Path, model_sha256: str) -> Path:
    """After ``--store``: the stored-profile baseline beside the model, naming its new hash."""
    data = json.loads((out_dir / STORED_FILE).read_text(encoding="utf-8"))
    data["model_sha256"] = model_sha256
    path = baseline_path(model_path)
    _write(path, data)
    return path


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
