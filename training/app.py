"""What each ``xray-train`` command does: load the model, run the step, store what it made and
say so. The CLI (``training/cli.py``) only parses the options and calls these, as the worker's
does ``worker/app.py``.

Each function writes its lines through ``echo`` (``click.echo``'s signature: ``err=True`` for
stderr), in the order they happen, so a step that fails after its report still shows the
report. A request that cannot be carried out (a model that does not load, a folder with no
labelled films, a model not fit to store) raises ``CommandError`` with a sentence the user can
act on; ``training.cli.Commands`` turns it into ``Error: ...`` and exit status 1.

torch and fastai are imported inside the functions, so ``xray-train --help`` runs on the lean
install and a command that needs the full install says so (``training.cli.main``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Echo = Callable[..., None]  # click.echo: (message, err=False)
EXPORT_AGAIN = "export the bundle the worker screens with again (xray-train export {model} --out DIR)"


class CommandError(Exception):
    """What a command cannot do, in a sentence the user can act on (exit status 1)."""


def load_learner(model_path: Path, sha256: str) -> Any:
    """The exported learner at ``model_path``; checked against ``sha256``, else trusted as the
    user's own (``CommandError`` when it does not load)."""
    from worker.errors import ModelError
    from worker.model.learner import load_model

    try:
        return load_model(model_path, sha256=sha256, trust=not sha256)
    except ModelError as exc:
        raise CommandError(str(exc)) from None


def fit(
    data_dir: Path,
    out_dir: Path,
    options: dict[str, Any],
    *,
    name: str,
    positive_class: str,
    target_sensitivity: float,
    progress: bool,
    echo: Echo,
) -> None:
    """``fit``: train with the recipe ``options`` into ``out_dir``; its validation figures."""
    from training.recipe import Recipe
    from training.run import run_fit

    facts = run_fit(
        data_dir,
        out_dir,
        Recipe(**options),
        name=name,
        positive_class=positive_class,
        target_sensitivity=target_sensitivity,
        progress=progress,
        echo=echo,
    )
    v = facts["validation"]
    echo(
        f"validation: ROC AUC {v['roc_auc']:.3f}, sensitivity {v['sensitivity']:.3f}, "
        f"specificity {v['specificity']:.3f} at threshold {v['threshold']:.4f}"
    )
    echo(f"wrote {out_dir / 'export.pkl'} (SHA-256 {facts['model']['sha256']})")


def evaluate(
    model_path: Path,
    data_dir: Path,
    out_dir: Path,
    *,
    split: str,
    labels_csv: Path | None,
    sha256: str,
    threshold: float | None,
    target_sensitivity: float | None,
    store: bool,
    batch_size: int,
    record_in: Path | None,
    eval_name: str | None,
    echo: Echo,
) -> None:
    """``evaluate``: the model on a labelled folder, through the worker's inference path; the
    report into ``out_dir``, its figures as JSON, the files that failed; then, as asked, the
    figures recorded in a model folder and the threshold stored in the model file."""
    from training.data import labelled_files
    from training.evaluation import evaluate_files, pick_threshold, write_report
    from worker.config import InferenceSettings
    from worker.model.learner import file_sha256

    model = load_learner(model_path, sha256)
    try:
        files = labelled_files(data_dir, split, labels_csv)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if not files:
        raise CommandError(f"no labelled images found in {data_dir}")
    ev = evaluate_files(model, files, InferenceSettings(batch_size=batch_size))
    extra: dict[str, Any] = {"model": str(model_path), "model_sha256": model.sha256, "data": str(data_dir)}
    if target_sensitivity is not None:
        extra["thresholds"] = pick_threshold(ev, target_sensitivity)
        threshold = extra["thresholds"]["at_target_sensitivity"]
    if threshold is None:
        threshold = float(model.metadata.get("threshold") or 0.5)
    summary = write_report(ev, out_dir, threshold, f"{data_dir.name} ({len(ev.predictions)} images)", extra)
    shown = ("n", "threshold", "roc_auc", "sensitivity", "specificity", "balanced_accuracy", "accuracy")
    echo(json.dumps({k: summary[k] for k in shown}, indent=2))
    for failure in ev.failures:
        echo(f"{failure.path}  ERROR  {failure.reason}", err=True)
    if record_in is not None:
        from training.card import record_evaluation

        record_evaluation(record_in, eval_name or data_dir.name, summary)
        echo(f"recorded in {record_in / 'metrics.json'} and {record_in / 'MODEL_CARD.md'}")
    if store:
        learn = model.learner
        learn.xray_metadata = {
            **model.metadata,
            "threshold": threshold,
            "target_sensitivity": target_sensitivity,
        }
        learn.export(model_path.resolve())
        echo(
            f"stored threshold {threshold:.4f} in {model_path}; new SHA-256 {file_sha256(model_path)}: "
            f"{EXPORT_AGAIN.format(model=model_path)} and update [model] sha256"
        )


def site_check(
    model_path: Path,
    site_dir: Path,
    out_dir: Path | None,
    *,
    sha256: str,
    name: str | None,
    store: bool,
    echo: Echo,
    **options: Any,
) -> None:
    """``site-check``: the model's figures on a site's labelled sample (``options``: those of
    ``run_site_check``), written to ``out_dir`` (default: runs/site-check/NAME); with
    ``store``, if fit and deployable, the site threshold, calibration and profile stored in the
    model file, its card refreshed and the drift baseline written."""
    from training.baseline import store_baseline
    from training.card import refresh_model_card
    from training.site_check import report_lines, run_site_check, store_site_profile
    from worker.model.learner import file_sha256

    model = load_learner(model_path, sha256)
    out_dir = out_dir or Path("runs/site-check") / (name or site_dir.resolve().name)
    try:
        report = run_site_check(model, site_dir, out_dir, name=name or site_dir.resolve().name, **options)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    for line in report_lines(report, out_dir):
        echo(line)
    echo(f"wrote {out_dir / 'site_check.json'}")
    if not store:
        return
    if not report["verdict"]["fit"]:
        raise CommandError("not storing a site profile: the model is not fit for this site")
    try:
        store_site_profile(model, report)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    sha = file_sha256(model_path)
    if refresh_model_card(model_path.parent, model.learner.xray_metadata, sha, model.sha256):
        echo(f"updated {model_path.parent / 'MODEL_CARD.md'} and metrics.json")
    fitted = report["calibration"].get("fitted")
    threshold = fitted["threshold"] if fitted else report["at_target_sensitivity"]["threshold"]
    how = f"{fitted['method']} calibration, " if fitted else ""
    echo(
        f"stored site profile {report['site']!r} ({how}threshold {threshold:.4f}) in {model_path}; "
        f"new SHA-256 {sha}: {EXPORT_AGAIN.format(model=model_path)} and update [model] sha256"
    )
    echo(f"wrote {store_baseline(out_dir, model_path, sha)} (the reference for drift monitoring)")


def adapt(
    model_path: Path,
    site_dir: Path,
    out_dir: Path,
    *,
    sha256: str,
    labels_csv: Path | None,
    name: str | None,
    progress: bool,
    echo: Echo,
    **options: Any,
) -> None:
    """``adapt``: fine-tune on a site's films by the plan ``options`` (``AdaptPlan``) into
    ``out_dir``; ``CommandError`` when the operating point is not deployable (no model
    written)."""
    from training.adapt import AdaptPlan, adapt_summary, run_adapt

    model = load_learner(model_path, sha256)
    plan = AdaptPlan(**options)
    try:
        facts = run_adapt(
            model, site_dir, out_dir, plan, labels_csv=labels_csv, name=name, progress=progress, echo=echo
        )
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    for line in adapt_summary(facts):
        echo(line)
    if not facts["deployable"]:
        raise CommandError(
            f"no model written: its operating point is not deployable (wrote {out_dir / 'MODEL_CARD.md'}, "
            f"{out_dir / 'metrics.json'})"
        )
    echo(f"wrote {out_dir / 'export.pkl'}, {out_dir / 'MODEL_CARD.md'}")


def fit_gate(
    model_path: Path,
    data_dir: Path,
    *,
    layers: Sequence[str],
    refuse_share: float,
    valid_pct: float,
    seed: int,
    sha256: str,
    echo: Echo,
) -> None:
    """``gate``: the image gate fitted on the model's training films, stored in the model file
    (its card refreshed)."""
    from training.card import refresh_model_card
    from training.gate import fit_model_gate
    from worker.model.learner import file_sha256, load_model

    model = load_model(model_path, sha256=sha256, trust=not sha256)
    fit = fit_model_gate(
        model, data_dir, layers=tuple(layers), valid_pct=valid_pct, seed=seed, refuse_share=refuse_share
    )
    learn = model.learner
    learn.xray_metadata = {**model.metadata, "gate": fit.gate.to_metadata()}
    learn.export(model_path.resolve())
    echo(
        f"image gate over {', '.join(fit.gate.layer_names)}: limit {fit.gate.limit:.3f}, refuses "
        f"{fit.valid_refused:.1%} of {fit.valid_files} validation films "
        f"(fitted on {fit.train_files} training films in {fit.seconds:.0f} s)"
    )
    sha = file_sha256(model_path)
    echo(
        f"stored in {model_path}; new SHA-256 {sha}: {EXPORT_AGAIN.format(model=model_path)} "
        "and update [model] sha256"
    )
    if refresh_model_card(
        model_path.parent, learn.xray_metadata, sha, model.sha256, valid_refused=fit.valid_refused
    ):
        echo(f"updated {model_path.parent / 'MODEL_CARD.md'} and metrics.json")


def export(model_path: Path, out_dir: Path, *, variant: str, echo: Echo, **options: Any) -> bool:
    """``export``: the learner as a model bundle (``options``: those of ``export_variant``);
    whether the variant was accepted (a reduced-precision one must pass its validation)."""
    from training.variants import export_variant

    result = export_variant(model_path, out_dir, variant=variant, **options)
    for line in result.lines:
        echo(line)
    echo(f"bundle: {result.manifest}")
    echo(f"SHA-256 of bundle.json: {result.sha256} (set [model] path to the folder and sha256 to this)")
    if not result.accepted:
        echo(f"{variant} variant NOT accepted: see {result.manifest.parent / 'MODEL_CARD.md'}", err=True)
    return bool(result.accepted)
