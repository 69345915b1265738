"""Is the model fit for a new site? Figures with confidence intervals on the site's own sample.

The statistics are pure functions over arrays (numpy only): the cluster bootstrap, the Wilson
score interval, the expected calibration error. ``run_site_check`` predicts a labelled sample
through the worker's own inference path (``training.evaluation.evaluate_files``) and gathers
them into one report; ``store_site_profile`` writes the chosen operating point into the model.

The rule: a model is **not fit** for a site when the lower bound of its ROC AUC's 95%
interval on the site's sample is below ``MIN_AUC`` (0.90).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from training.metrics import Confusion, roc_auc
from training.operating import MIN_SPECIFICITY, Z_95, OperatingPoint, choose, needs_words, wilson_bounds
from training.split import patient_id
from worker.strict_json import finite

MIN_AUC = 0.90
RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
ECE_BINS = 10


# -- statistics ---------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (NaNs when n is 0)."""
    if n == 0:
        return float("nan"), float("nan")
    z = Z_95 if level == LEVEL else NormalDist().inv_cdf(0.5 + level / 2)
    lo, hi = wilson_bounds(successes, n, z)
    return float(lo), float(hi)


def cluster_resamples(
    groups: Sequence[Any] | np.ndarray, resamples: int = RESAMPLES, seed: int = SEED
) -> Iterator[np.ndarray]:
    """Index arrays, each a bootstrap resample of whole clusters, drawn with replacement.

    Every item of ``groups`` names its cluster (a patient); a drawn cluster brings all of its
    items. With every item its own cluster this is the ordinary bootstrap. Clusters are
    numbered in sorted order of their names, so a seed gives the same draws every time.
    """
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")  # items grouped by cluster
    counts = np.bincount(inverse)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        drawn = rng.integers(0, len(counts), len(counts))
        sizes = counts[drawn]
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        yield order[np.repeat(starts[drawn], sizes) + within]


def bootstrap(
    statistic: Callable[[np.ndarray], Sequence[float] | float],
    groups: Sequence[Any] | np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> np.ndarray:
    """``statistic(indices)`` on every cluster resample: an array (resamples, k)."""
    return np.array(
        [
            np.atleast_1d(np.asarray(statistic(idx), dtype=float))
            for idx in cluster_resamples(groups, resamples, seed)
        ]
    )


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval, ignoring NaN (undefined) resamples."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def reliability_bins(y_true: np.ndarray, p_pos: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Equal-width bins of P(positive): each bin's count, mean probability and observed rate.

    Bin ``b`` holds ``b/bins <= p < (b+1)/bins``; the last one also holds p = 1.
    """
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(p_pos, dtype=float)
    which = np.minimum(np.floor(p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        out.append(
            {
                "lo": b / bins,
                "hi": (b + 1) / bins,
                "n": n,
                "mean_p": float(p[inside].mean()) if n else None,
                "observed": float(y[inside].mean()) if n else None,
            }
        )
    return out


def expected_calibration_error(y_true: np.ndarray, p_pos: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the mean over bins of |observed rate - mean probability|, weighted by bin size."""
    total = len(np.asarray(p_pos))
    if total == 0:
        return float("nan")
    return float(
        sum(
            b["n"] / total * abs(b["observed"] - b["mean_p"])
            for b in reliability_bins(y_true, p_pos, bins)
            if b["n"]
        )
    )


@dataclass(frozen=True)
class Rate:
    """A proportion with its Wilson interval and, where given, a bootstrap one."""

    value: float
    successes: int
    n: int
    wilson: tuple[float, float]
    bootstrap: tuple[float, float] | None = None

    @classmethod
    def of(cls, successes: int, n: int, bootstrap: tuple[float, float] | None = None) -> Rate:
        value = successes / n if n else float("nan")
        return cls(value, successes, n, wilson_interval(successes, n), bootstrap)

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "count": f"{self.successes}/{self.n}",
            "ci": list(self.wilson),
            "ci_bootstrap": list(self.bootstrap) if self.bootstrap else None,
        }


def operating_point(
    y_true: np.ndarray, p_pos: np.ndarray, threshold: float, boot: np.ndarray | None = None
) -> dict[str, Any]:
    """Sensitivity and specificity at ``threshold``, each with its intervals.

    ``boot``: bootstrap (sensitivity, specificity) pairs, for the second interval.
    """
    c = Confusion.at(y_true, p_pos, threshold)
    b_sens = percentile_interval(boot[:, 0]) if boot is not None else None
    b_spec = percentile_interval(boot[:, 1]) if boot is not None else None
    return {
        "threshold": float(threshold),
        "sensitivity": Rate.of(c.tp, c.tp + c.fn, b_sens).as_dict(),
        "specificity": Rate.of(c.tn, c.tn + c.fp, b_spec).as_dict(),
        "confusion": c.as_dict(),
    }


def _rates(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    pred = p >= threshold
    pos, neg = y.sum(), (~y).sum()
    sens = (pred & y).sum() / pos if pos else float("nan")
    spec = (~pred & ~y).sum() / neg if neg else float("nan")
    return float(sens), float(spec)


def site_statistics(
    y_true: np.ndarray,
    p_pos: np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    *,
    stored_threshold: float,
    target_sensitivity: float,
    rule: str = "wilson",
    min_specificity: float = MIN_SPECIFICITY,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """Every figure of a site check, from labels (1 = positive), probabilities and patients.

    One cluster bootstrap (``groups``: the patient of each film, or the film itself) gives
    the intervals of the AUC, of the site threshold, and the second intervals of the rates.
    The site threshold is the operating point ``rule`` chooses (``training/operating.py``); the
    other rule's point is reported beside it (``other_rule``), to show what the choice costs.
    For each resample it also chooses the site threshold afresh and measures its sensitivity
    and specificity on the patients that resample left out: what choosing a threshold on a
    sample of this size delivers on new patients (the in-sample figures flatter it).
    """
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(p_pos, dtype=float)
    if y.all() or not y.any():
        raise ValueError("a site check needs films of both classes")
    chosen = choose(y, p, target_sensitivity, rule, min_specificity=min_specificity)
    site_threshold = chosen.threshold

    def statistic(idx: np.ndarray) -> list[float]:
        yb, pb = y[idx], p[idx]
        if yb.all() or not yb.any():
            return [float("nan")] * 8
        t = choose(yb, pb, target_sensitivity, rule, min_specificity=0.0, estimate_needs=False).threshold
        left_out = np.ones(len(y), dtype=bool)
        left_out[idx] = False
        return [
            roc_auc(yb, pb),
            *_rates(yb, pb, stored_threshold),
            t,
            *_rates(yb, pb, site_threshold),
            *_rates(y[left_out], p[left_out], t),
        ]

    boot = bootstrap(statistic, groups, resamples, seed)
    skipped = int(np.isnan(boot[:, 0]).sum())
    at_site = operating_point(y, p, site_threshold, boot[:, 4:6])
    at_site.update(_choice(chosen))
    other = choose(
        y, p, target_sensitivity, "point" if rule == "wilson" else "wilson", min_specificity=min_specificity
    )
    at_site["other_rule"] = {**_choice(other), **operating_point(y, p, other.threshold)}
    at_site["threshold_ci"] = list(percentile_interval(boot[:, 3]))
    at_site["on_left_out_patients"] = {
        key: {"median": _median(boot[:, col]), "ci": list(percentile_interval(boot[:, col]))}
        for key, col in (("sensitivity", 6), ("specificity", 7))
    }
    auc = roc_auc(y, p)
    auc_ci = percentile_interval(boot[:, 0])
    return {
        "n": len(y),
        "positives": int(y.sum()),
        "negatives": int((~y).sum()),
        "patients": len(np.unique(np.asarray(groups))),
        "auc": auc,
        "auc_ci": list(auc_ci),
        "at_stored_threshold": operating_point(y, p, stored_threshold, boot[:, 1:3]),
        "at_target_sensitivity": at_site,
        "calibration": {
            "ece": expected_calibration_error(y, p),
            "bins": reliability_bins(y, p),
        },
        "bootstrap": {"resamples": resamples, "seed": seed, "level": LEVEL, "skipped": skipped},
    }


def _choice(point: OperatingPoint) -> dict[str, Any]:
    """How an operating point was chosen, and whether it may be deployed."""
    return {
        "threshold": point.threshold,
        "target_sensitivity": point.target_sensitivity,
        "rule": point.rule,
        "min_specificity": point.min_specificity,
        "sensitivity_lower": point.sensitivity_lower,
        "specificity_lower": point.specificity_lower,
        "reached": point.reached,
        "deployable": point.deployable,
        "refused": point.refused,
        "needs": point.needs,
    }


def _median(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(np.median(values)) if len(values) else float("nan")


def verdict(stats: dict[str, Any]) -> tuple[bool, str]:
    """(fit, the verdict line): not fit when the AUC interval's lower bound is below MIN_AUC."""
    lo, hi = stats["auc_ci"]
    if not lo >= MIN_AUC:  # NaN is not fit either
        return False, f"not fit: AUC interval [{lo:.3f}-{hi:.3f}] is below {MIN_AUC:.2f}"
    at = stats["at_target_sensitivity"]
    sens, spec = at["sensitivity"], at["specificity"]
    return True, (
        f"fit for this site at threshold {at['threshold']:.4f} "
        f"(sensitivity {sens['value']:.3f} [{sens['ci'][0]:.3f}-{sens['ci'][1]:.3f}], "
        f"specificity {spec['value']:.3f} [{spec['ci'][0]:.3f}-{spec['ci'][1]:.3f}])"
    )


# -- patients -----------------------------------------------------------------------------


def patient_groups(files: Sequence[Path], patients: Sequence[str | None]) -> tuple[list[str], str]:
    """The bootstrap's cluster for each film, and where the clusters came from.

    A patient id given (a ``patient_id`` column) wins; otherwise the Kermany file name
    (``training.split.patient_id``); a film with neither is a cluster of its own. The source
    is "labels.csv patient_id", "file names", or "files" when no film has a patient.
    """
    if any(patients):
        groups = [f"patient:{pid}" if pid else f"file:{f}" for f, pid in zip(files, patients, strict=True)]
        return groups, "labels.csv patient_id"
    from_names = [patient_id(f) for f in files]
    groups = [f"file:{f}" if g.startswith("file:") else g for g, f in zip(from_names, files, strict=True)]
    known = any(not g.startswith("file:") for g in from_names)
    return groups, "file names" if known else "files"


# -- calibration --------------------------------------------------------------------------


def calibration_fit(
    margins: np.ndarray,
    y_true: np.ndarray,
    groups: Sequence[Any],
    method: str,
    target_sensitivity: float,
    fitted_on: str,
    rule: str = "wilson",
) -> dict[str, Any]:
    """A calibration of the model's logit ``margins`` to this sample, and how well it does.

    ``ece_in_sample`` is on the films it was fitted on; ``ece_cross_fitted`` gives each
    patient a calibration fitted on the other patients (5 folds), which is what a new
    patient can expect. Both methods' cross-fitted ECE are reported, the chosen one is
    stored by ``--store``, with the target-sensitivity threshold on its scale.
    """
    from worker.model.calibration import METHODS, cross_fitted, fit_calibration

    y = np.asarray(y_true).astype(bool)
    chosen = fit_calibration(margins, y, method, fitted_on=fitted_on)
    p = chosen.positive(margins)
    crossed = {m: cross_fitted(margins, y, np.asarray(groups), m) for m in METHODS}
    return {
        **chosen.to_metadata(),
        "ece_in_sample": expected_calibration_error(y, p),
        "ece_cross_fitted": expected_calibration_error(y, crossed[method]),
        "ece_cross_fitted_by_method": {m: expected_calibration_error(y, c) for m, c in crossed.items()},
        "bins_cross_fitted": reliability_bins(y, crossed[method]),
        # the same cut as the site's operating point (calibration is monotone), on this scale
        "threshold": choose(y, p, target_sensitivity, rule, estimate_needs=False).threshold,
    }


# -- the gate -----------------------------------------------------------------------------


def gate_refusals(model: Any, predictions: Sequence[Any]) -> list[bool] | None:
    """Which of the sample's films the gate would refuse, by the default ``[gate]`` settings
    (DICOM attributes) and the model's image gate (``worker/model/gate.py``); None when the
    model has no image gate ("not fitted for this model"). The evaluation scored every film
    (``Prediction.gate_score``) without refusing any, so the figures above cover them all."""
    from worker.config import GateSettings
    from worker.model.gate import ImageGate
    from worker.pipeline.gate import Gate

    image = ImageGate.of(model)
    gate = Gate.from_settings(GateSettings(), image)
    if image is None or gate is None:
        return None
    return [bool(gate.before(p.decoded) or gate.after(p.gate_score)) for p in predictions]


# -- the run ------------------------------------------------------------------------------


def run_site_check(
    model: Any,
    site_dir: Path,
    out_dir: Path,
    *,
    labels_csv: Path | None = None,
    name: str | None = None,
    target_sensitivity: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    calibrate: str = "platt",
    rule: str = "wilson",
    min_specificity: float = MIN_SPECIFICITY,
) -> dict[str, Any]:
    """Predict the site's sample, compute every figure, write site_check.json and reliability.png,
    and the site baselines for drift monitoring (``training/baseline.py``).

    The figures are of the probabilities the model reports today (with its stored calibration,
    if any). ``calibrate`` (``platt``, ``temperature`` or ``none``) also fits a calibration of
    the model's own output to this sample (``calibration.fitted``; ``--store`` keeps it)."""
    from training import plots
    from training.baseline import write_baselines
    from training.data import labelled_files
    from training.evaluation import evaluate_files
    from worker.model.calibration import Calibration, margins_of

    if labels_csv is None and (site_dir / "labels.csv").is_file():
        labels_csv = site_dir / "labels.csv"
    listed = labelled_files(site_dir, "test", labels_csv, with_patients=True)
    if not listed:
        raise ValueError(f"no labelled images found in {site_dir}")
    patient_of = {str(f): pid for f, _, pid in listed}
    ev = evaluate_files(model, [(f, label) for f, label, _ in listed], calibrate=False)
    files = [pred.path for pred in ev.predictions]
    groups, source = patient_groups(files, [patient_of[str(f)] for f in files])
    stored = model.metadata.get("threshold")
    stored_threshold = float(stored) if stored is not None else 0.5
    margins = margins_of(ev.p_pos)  # the model's own logit margins
    in_use = Calibration.of(model)
    p_reported = in_use.positive(margins) if in_use is not None else ev.p_pos
    stats = site_statistics(
        ev.labels,
        p_reported,
        groups,
        stored_threshold=stored_threshold,
        target_sensitivity=target_sensitivity,
        rule=rule,
        min_specificity=min_specificity,
        resamples=resamples,
        seed=seed,
    )
    if source == "files":
        stats["patients"] = None  # not known
    stats["calibration"]["in_use"] = in_use.to_metadata() if in_use is not None else None
    if calibrate != "none":
        stats["calibration"]["fitted"] = calibration_fit(
            margins,
            ev.labels,
            groups,
            calibrate,
            target_sensitivity,
            fitted_on=f"{name or site_dir.name}: {len(files)} films",
            rule=rule,
        )
    fit, line = verdict(stats)
    refusals = gate_refusals(model, ev.predictions)
    refused = sum(refusals) if refusals is not None else None
    screened_auc = None
    if refusals is not None:
        kept = ~np.array(refusals, dtype=bool)
        if 0 < ev.labels[kept].sum() < kept.sum():
            screened_auc = float(roc_auc(ev.labels[kept], ev.p_pos[kept]))
    now = dt.datetime.now(dt.UTC)
    report = {
        "site": name or site_dir.name,
        "sample": str(site_dir),
        "labels": str(labels_csv) if labels_csv else "class folders",
        "model": str(model.path),
        "model_name": model.name,
        "model_sha256": model.sha256,
        "classes": ev.classes,
        "date": now.isoformat(timespec="seconds"),
        "checked_on": now.date().isoformat(),
        **stats,
        "bootstrap": {
            **stats["bootstrap"],
            "unit": "file" if source == "files" else "patient",
            "patients_from": source,
            "interval": "percentile",
        },
        "rate_intervals": "ci: Wilson score (films as independent); ci_bootstrap: the AUC's bootstrap",
        "stored_threshold_source": "model metadata" if stored is not None else "none stored: 0.5",
        "gate": {
            "refusals": refused,
            "refusal_rate": refused / len(files) if refused is not None and files else None,
            "status": "not fitted for this model" if refused is None else "fitted",
            "screened": len(files) - refused if refused is not None else None,
            "auc_of_screened": screened_auc,  # AUC on the films the gate lets through
        },
        "failed": [{"path": str(f.path), "reason": f.reason} for f in ev.failures],
        "verdict": {
            "fit": fit,
            "line": line,
            "rule": f"not fit when the AUC interval's lower bound < {MIN_AUC}",
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plots.reliability_plot(
        out_dir / "reliability.png",
        stats["calibration"]["bins"],
        stats["calibration"]["ece"],
        f"{report['site']} ({stats['n']} films)",
    )
    fitted = stats["calibration"].get("fitted")
    if fitted:
        plots.reliability_plot(
            out_dir / "reliability-calibrated.png",
            fitted["bins_cross_fitted"],
            fitted["ece_cross_fitted"],
            f"{report['site']}: {fitted['method']} calibration, cross-fitted",
        )
    write_json(out_dir / "site_check.json", report)
    write_baselines(out_dir, report, ev, p_reported, margins, refusals, stored_threshold, in_use)
    return report


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(finite(report), indent=2) + "\n")


def report_lines(report: dict[str, Any], out_dir: Path) -> list[str]:
    """The short readable report."""
    b = report["bootstrap"]
    unit = f"{report['patients']} patients" if b["unit"] == "patient" else "no patient ids"
    lo, hi = report["auc_ci"]
    st, at = report["at_stored_threshold"], report["at_target_sensitivity"]

    def rate(r: dict[str, Any]) -> str:
        return f"{r['value']:.3f} [{r['ci'][0]:.3f}-{r['ci'][1]:.3f}]"

    pos, neg = report["classes"][1], report["classes"][0]
    left_out = at["on_left_out_patients"]

    def median(r: dict[str, Any]) -> str:
        return f"{r['median']:.3f} [{r['ci'][0]:.3f}-{r['ci'][1]:.3f}]"

    lines = [
        f"site check: {report['model_name']} ({report['model_sha256'][:12]}) on {report['site']}: "
        f"{report['n']} films ({report['positives']} {pos}, {report['negatives']} {neg}), {unit}",
        f"ROC AUC {report['auc']:.3f} [{lo:.3f}-{hi:.3f}]  (95%, bootstrap of {b['unit']}s: "
        f"{b['resamples']} resamples, seed {b['seed']}"
        + (f"; patients from {b['patients_from']})" if b["unit"] == "patient" else ")"),
        f"stored threshold {st['threshold']:.4f}: sensitivity {rate(st['sensitivity'])}, "
        f"specificity {rate(st['specificity'])}  (Wilson 95%)",
        f"operating point ({rule_words(at['rule'] if at.get('reached', True) else 'point')} >= "
        f"{at['target_sensitivity']:g}): threshold "
        f"{at['threshold']:.4f} [{at['threshold_ci'][0]:.4f}-{at['threshold_ci'][1]:.4f}], sensitivity "
        f"{rate(at['sensitivity'])}, specificity {rate(at['specificity'])}",
        f"  chosen on resamples, judged on the {b['unit']}s each left out: sensitivity "
        f"{median(left_out['sensitivity'])}, specificity {median(left_out['specificity'])}",
        *_other_rule_line(at),
        *_refusal_lines(at, report, pos, neg),
        f"calibration: ECE {report['calibration']['ece']:.3f} (10 bins); {out_dir / 'reliability.png'}",
    ]
    fitted = report["calibration"].get("fitted")
    if fitted:
        others = ", ".join(f"{m} {e:.3f}" for m, e in fitted["ece_cross_fitted_by_method"].items())
        lines.append(
            f"  {fitted['method']} calibration fitted here "
            f"(scale {fitted['scale']:.3f}, bias {fitted['bias']:+.3f}): "
            f"ECE {fitted['ece_in_sample']:.3f} in sample, {fitted['ece_cross_fitted']:.3f} on held-out "
            f"patients (5 folds; {others})" + ("; --store keeps it" if report["verdict"]["fit"] else "")
        )
    gate = report["gate"]
    if gate["refusals"] is None:
        lines.append("gate: not fitted for this model")
    else:
        lines.append(f"gate: refused {gate['refusals']} of {report['n']} films ({gate['refusal_rate']:.1%})")
        if gate["auc_of_screened"] is not None:
            lines.append(
                f"      AUC on the {gate['screened']} films it lets through: {gate['auc_of_screened']:.3f}"
            )
    if report["failed"]:
        lines.append(f"{len(report['failed'])} files could not be read (listed in site_check.json)")
    lines.append(report["verdict"]["line"])
    return lines


def rule_words(rule: str) -> str:
    return "lower 95% bound of sensitivity" if rule == "wilson" else "sensitivity on the sample"


def _other_rule_line(at: dict[str, Any]) -> list[str]:
    """What the other rule would choose, and the specificity the chosen one costs or gains."""
    other = at.get("other_rule")
    if not other:
        return []
    cost = other["specificity"]["value"] - at["specificity"]["value"]
    return [
        f"  by the {other['rule']} rule ({rule_words(other['rule'])}): threshold {other['threshold']:.4f}, "
        f"sensitivity {other['sensitivity']['value']:.3f}, specificity {other['specificity']['value']:.3f}"
        + (f": the {at['rule']} rule costs {cost:.3f} specificity" if cost > 0 else "")
    ]


def _refusal_lines(at: dict[str, Any], report: dict[str, Any], positive: str, negative: str) -> list[str]:
    if at.get("refused") is None:
        return []
    return [
        f"  NOT DEPLOYABLE: {at['refused']}; {needs_words(at.get('needs'), report['n'], positive, negative)}"
    ]


def store_site_profile(model: Any, report: dict[str, Any]) -> None:
    """Write the site's operating point into the model file: metadata threshold and site_profile,
    and the calibration fitted on the site (then the threshold is on the calibrated scale).
    An operating point that is not deployable is refused (``ValueError``)."""
    at = report["at_target_sensitivity"]
    if at.get("refused") is not None:
        raise ValueError(
            f"not storing a site profile: its operating point is not deployable: {at['refused']}"
        )
    fitted = report["calibration"].get("fitted")
    threshold = fitted["threshold"] if fitted else at["threshold"]
    profile = {
        "name": report["site"],
        "threshold": threshold,
        "target_sensitivity": at["target_sensitivity"],
        "rule": at["rule"],
        "sensitivity": at["sensitivity"]["value"],
        "sensitivity_lower": at["sensitivity_lower"],
        "specificity": at["specificity"]["value"],
        "specificity_lower": at["specificity_lower"],
        "auc": report["auc"],
        "auc_ci": report["auc_ci"],
        "n": report["n"],
        "patients": report["patients"],
        "checked_on": report["checked_on"],
        "sample": report["sample"],
        "calibration": fitted["method"] if fitted else None,
        "ece_cross_fitted": fitted["ece_cross_fitted"] if fitted else None,
    }
    metadata = {
        **model.metadata,
        "threshold": threshold,
        "target_sensitivity": at["target_sensitivity"],
        "site_profile": finite(profile),
    }
    if fitted:
        keys = ("method", "scale", "bias", "fitted_on")
        metadata["calibration"] = {k: fitted[k] for k in keys}
    else:
        metadata.pop("calibration", None)  # a calibration belongs to the profile it came with
    learn = model.learner
    learn.xray_metadata = metadata
    learn.export(Path(model.path).resolve())
