"""What a stretch of screening looked like, in the figures drift is judged on: a ``Sample``.

A sample comes from the results database (a period: ``worker/db/window.py``) or from the
site baseline stored with the model (``site_baseline.json``, written by
``xray-train site-check``: the model's answers on the site's labelled sample). Both say the
same things: how many films got a verdict and how many were positive, the distribution of
P(PNEUMONIA), how many films met the gate and how many it refused, the mix of formats and of
image sizes.

A baseline stores P as 101 percentiles and a 20-bin histogram rather than every film's P:
small, and enough for the Kolmogorov-Smirnov distance (to within 0.01).
"""

from __future__ import annotations

import bisect
import contextlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.drift.stats import PERCENTILES
from worker.errors import ConfigError

BASELINE_FILE = "site_baseline.json"  # beside the model file
BASELINE_KIND = "xray-screen site baseline"
HISTOGRAM_BINS = 20  # of P, 0..1
# Image sizes as classes of the long side, in pixels: a model trained on ~1-2k px films
# meets thumbnails or detector-resolution DICOMs as a change of population.
SIZE_EDGES = (512, 1024, 2048)
SIZE_CLASSES = ("< 512 px", "512-1023 px", "1024-2047 px", ">= 2048 px")
FORMATS = ("PNG", "JPEG", "DICOM")


def size_class(width: int, height: int) -> str:
    """The class of an image's long side (``SIZE_CLASSES``)."""
    return SIZE_CLASSES[bisect.bisect_right(SIZE_EDGES, max(width, height))]


@dataclass(frozen=True)
class Sample:
    """The figures of one stretch of screening (see the module's docstring)."""

    label: str  # "2026-11-01..2026-11-30", "site profile kermany-test"
    results: int  # films with a verdict
    positives: int
    gated: int  # films the gate judged: results + refused
    refused: int
    p_quantiles: np.ndarray  # percentiles 0..100 of P; empty without results
    p_histogram: np.ndarray  # counts in HISTOGRAM_BINS equal bins of 0..1
    formats: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    models: tuple[str, ...] = ()  # "name version (sha256[:12])" of the models that gave the verdicts
    model_sha256s: frozenset[str] = frozenset()
    p_values: np.ndarray | None = None  # every film's P, when known (a period, not a baseline)
    p_mean: float | None = None

    @property
    def positive_rate(self) -> float | None:
        return self.positives / self.results if self.results else None

    @property
    def refusal_rate(self) -> float | None:
        return self.refused / self.gated if self.gated else None

    @classmethod
    def of_films(
        cls,
        label: str,
        films: Iterable[tuple[float, bool, str, int, int]],
        *,
        refused: int,
        models: Iterable[tuple[str, str, str]] = (),
    ) -> Sample:
        """From (P, positive, format, width, height) of each film with a verdict, and the
        number of films the gate refused; ``models``: (name, version, sha256) of those that
        gave the verdicts."""
        rows = list(films)
        models = list(models)
        p = np.array([row[0] for row in rows], dtype=float)
        return cls(
            label=label,
            results=len(rows),
            positives=sum(1 for row in rows if row[1]),
            gated=len(rows) + refused,
            refused=refused,
            p_quantiles=np.quantile(p, PERCENTILES) if len(p) else np.array([]),
            p_histogram=histogram(p),
            formats=dict(Counter(row[2] for row in rows)),
            sizes=dict(Counter(size_class(row[3], row[4]) for row in rows)),
            models=tuple(f"{name} {version} ({sha[:12]})" for name, version, sha in models),
            model_sha256s=frozenset(sha for _, _, sha in models),
            p_values=p,
            p_mean=float(p.mean()) if len(p) else None,
        )

    @classmethod
    def of_baseline(cls, data: Mapping[str, Any]) -> Sample:
        """From a stored baseline (``baseline``'s dictionary)."""
        return cls(
            label=f"site profile {data['site']}",
            results=int(data["results"]),
            positives=int(data["positives"]),
            gated=int(data["results"]) + int(data["refused"]),
            refused=int(data["refused"]),
            p_quantiles=np.array(data["p_percentiles"], dtype=float),
            p_histogram=np.array(data["p_histogram"], dtype=float),
            formats=dict(data["formats"]),
            sizes=dict(data["sizes"]),
            models=(f"{data['model_name']} ({data['model_sha256'][:12]})",),
            model_sha256s=frozenset({data["model_sha256"]}),
            p_mean=float(data["p_mean"]),
        )


def histogram(p: np.ndarray) -> np.ndarray:
    return np.histogram(p, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]


def baseline(
    *,
    site: str,
    sample: str,
    checked_on: str,
    model_name: str,
    model_sha256: str,
    threshold: float,
    calibration: str | None,
    p: Iterable[float],
    images: Iterable[tuple[str, int, int]],
    refused: int,
    failed: int,
) -> dict[str, Any]:
    """The baseline of a site's labelled sample, as ``site_baseline.json`` stores it.

    ``p`` and ``images`` (format, width, height) are of the films the gate let through, in
    the same order; ``p`` as the worker reports it (with the calibration it will use), and
    a film is positive at ``threshold`` as the worker labels it (P >= threshold)."""
    p = np.asarray(list(p), dtype=float)
    images = list(images)
    if len(p) != len(images):
        raise ValueError(f"{len(p)} probabilities for {len(images)} images")
    if not len(p):
        raise ValueError("no film got a verdict: there is no baseline to store")
    positives = int((p >= threshold).sum())
    return {
        "kind": BASELINE_KIND,
        "site": site,
        "sample": sample,
        "checked_on": checked_on,
        "model_name": model_name,
        "model_sha256": model_sha256,
        "threshold": float(threshold),
        "calibration": calibration,
        "films": len(p) + refused + failed,
        "failed": failed,
        "refused": refused,
        "refusal_rate": refused / (len(p) + refused),
        "results": len(p),
        "positives": positives,
        "positive_rate": positives / len(p),
        "p_mean": float(p.mean()),
        "p_percentiles": [round(float(v), 6) for v in np.quantile(p, PERCENTILES)],
        "p_histogram": histogram(p).tolist(),
        "formats": dict(sorted(Counter(fmt for fmt, _, _ in images).items())),
        "sizes": {
            k: v
            for k, v in ((c, sum(size_class(w, h) == c for _, w, h in images)) for c in SIZE_CLASSES)
            if v
        },
    }


def baseline_path(model_path: Path) -> Path:
    """Where a model's baseline is: beside the learner file (``export.pkl``), or beside the folder
    of a bundle exported from it (``xray-train export``: ``onnx/``); the first that exists."""
    path = Path(model_path)
    folder = path if path.is_dir() else path.parent  # a bundle's folder, or the file's
    if path.name == "bundle.json":
        folder = path.parent
    candidates = [folder / BASELINE_FILE, folder.parent / BASELINE_FILE]
    return next((c for c in candidates if c.is_file()), candidates[0])


def model_hashes(model_path: Path, sha256: str) -> set[str]:
    """The SHA-256s a baseline may name for this model: its own, and for a bundle, that of the
    learner it was exported from (its ``bundle.json`` says which)."""
    hashes = {sha256.lower()} if sha256 else set()
    path = Path(model_path)
    manifest = path if path.name == "bundle.json" else path / "bundle.json"
    # Not a bundle, or one that names no source: its own hash only.
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        hashes.add(str(json.loads(manifest.read_text(encoding="utf-8"))["source"]["sha256"]).lower())
    return hashes


def load_baseline(model_path: Path, model_sha256: str) -> dict[str, Any]:
    """The baseline stored with the model; ``ConfigError`` when there is none, or it describes
    another model (``model_sha256``: the configured one; empty: not checked)."""
    path = baseline_path(model_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no site baseline at {path}: run `xray-train site-check MODEL SITE_DIR --store` for this "
            "model, or use a period as the reference ([drift] reference or --reference, e.g. "
            "2026-11-01..2026-11-30)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the site baseline {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != BASELINE_KIND:
        raise ConfigError(f"{path} is not an xray-screen site baseline")
    accepted = model_hashes(model_path, model_sha256) if model_sha256 else set()
    if accepted and str(data.get("model_sha256", "")).lower() not in accepted:
        raise ConfigError(
            f"the site baseline {path} describes model {str(data.get('model_sha256', '?'))[:12]}, not the "
            f"configured {model_sha256[:12]}: run `xray-train site-check --store` for this model, or use "
            "a period as the reference ([drift] reference or --reference)"
        )
    return data
