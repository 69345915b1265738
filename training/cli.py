"""``xray-train``: train and evaluate the pneumonia screening model."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from worker import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="xray-train")
def cli() -> None:
    """Train a resnet18 pneumonia screening model with fastai, and evaluate models.

    \b
    Example:
      xray-train fit ../shared/data/chest_xray_224/train --out runs/first --epochs 10
      xray-train evaluate runs/first/export.pkl data/chest_xray/ --out runs/first/test
    """


@cli.command(name="fit")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/latest"),
    show_default=True,
    help="Folder for export.pkl, metrics, plots and the model card.",
)
@click.option("--size", default=128, show_default=True, help="Input size (pixels, square).")
@click.option("--epochs", default=5, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=2e-3, show_default=True, help="Peak learning rate of the one-cycle schedule.")
@click.option("--seed", default=42, show_default=True)
@click.option("--valid-pct", default=0.2, show_default=True)
@click.option(
    "--resize", "method", type=click.Choice(["squish", "crop", "pad"]), default="squish", show_default=True
)
@click.option(
    "--split",
    type=click.Choice(["patient", "random"]),
    default="patient",
    show_default=True,
    help="patient: one patient's images on one side only (Kermany names); random: per image.",
)
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option(
    "--augment-level",
    type=click.Choice(["mild", "strong"]),
    default="mild",
    show_default=True,
    help="mild: the shipped recipe's; strong: more lighting/contrast, gamma, crops, blur, noise (no flips).",
)
@click.option(
    "--label-smoothing",
    default=0.0,
    show_default=True,
    help="Label smoothing eps of the loss (0: plain cross-entropy); class weights still apply.",
)
@click.option("--mixup", default=0.0, show_default=True, help="MixUp alpha while training (0: off).")
@click.option(
    "--class-weights/--no-class-weights",
    default=True,
    show_default=True,
    help="Weight the loss by inverse class frequency.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A local torchvision resnet18 state dict to start from (no download).",
)
@click.option("--positive-class", default="", help="The class a positive screen means (default: the last).")
@click.option(
    "--target-sensitivity",
    default=0.95,
    show_default=True,
    help="The stored threshold is the highest reaching this sensitivity on validation.",
)
@click.option("--name", default="pneumonia-resnet18", show_default=True)
def fit_command(
    data_dir: Path, out_dir: Path, positive_class: str, target_sensitivity: float, name: str, **options: Any
) -> None:
    """Train on DATA_DIR (class subfolders, or the Kaggle train/val/test layout).

    Labels are the parent folder names. Writes export.pkl, metrics.json, MODEL_CARD.md and
    plots to --out. Progress bars in a terminal, one line per epoch in a log.

    \b
    Example:
      xray-train fit ../shared/data/chest_xray_224/train --out models/pneumonia-resnet18 --epochs 20
    """
    from training.recipe import Recipe
    from training.run import run_fit

    recipe = Recipe(**options)
    facts = run_fit(
        data_dir,
        out_dir,
        recipe,
        name=name,
        positive_class=positive_class,
        target_sensitivity=target_sensitivity,
        progress=sys.stdout.isatty(),
        echo=click.echo,
    )
    v = facts["validation"]
    click.echo(
        f"validation: ROC AUC {v['roc_auc']:.3f}, sensitivity {v['sensitivity']:.3f}, "
        f"specificity {v['specificity']:.3f} at threshold {v['threshold']:.4f}"
    )
    click.echo(f"wrote {out_dir / 'export.pkl'} (SHA-256 {facts['model']['sha256']})")


@cli.command(name="evaluate")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for metrics.json and the plots.",
)
@click.option("--split", default="test", show_default=True, help="Which folder of a Kaggle layout to use.")
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with columns file,label (class name or 1/0) instead of folder labels.",
)
@click.option("--sha256", default="", help="Expected SHA-256 of the model (else it is trusted as yours).")
@click.option(
    "--threshold", type=float, help="Decision threshold (default: the model's stored one, else 0.5)."
)
@click.option(
    "--target-sensitivity",
    type=float,
    help="Pick the threshold reaching this sensitivity on these files, with the best specificity.",
)
@click.option(
    "--store", is_flag=True, help="With --target-sensitivity: store that threshold in the model file."
)
@click.option("--batch-size", default=64, show_default=True)
@click.option(
    "--record-in",
    "record_in",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A model folder from fit: add these figures to its metrics.json and MODEL_CARD.md.",
)
@click.option("--name", "eval_name", help="The row's name in the model card (default: the data folder).")
def evaluate_command(
    model_path: Path,
    data_dir: Path,
    out_dir: Path,
    split: str,
    labels_csv: Path | None,
    sha256: str,
    threshold: float | None,
    target_sensitivity: float | None,
    store: bool,
    batch_size: int,
    record_in: Path | None,
    eval_name: str | None,
) -> None:
    """Evaluate MODEL_PATH on a labelled folder, through the worker's inference path.

    \b
    Example:
      xray-train evaluate models/pneumonia-resnet18/export.pkl ../shared/data/chest_xray_full/val --out eval/
      xray-train evaluate export.pkl ../shared/data/dicom --labels ../shared/data/dicom/labels.csv --out eval/
    """
    from training.data import labelled_files
    from training.evaluation import evaluate_files, pick_threshold, write_report
    from worker.config import InferenceSettings
    from worker.errors import ModelError
    from worker.model.learner import file_sha256, load_model

    if store and target_sensitivity is None:
        raise click.UsageError("--store needs --target-sensitivity")
    try:
        model = load_model(model_path, sha256=sha256, trust=not sha256)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        files = labelled_files(data_dir, split, labels_csv)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if not files:
        raise click.ClickException(f"no labelled images found in {data_dir}")
    ev = evaluate_files(model, files, InferenceSettings(batch_size=batch_size))
    extra: dict[str, Any] = {"model": str(model_path), "model_sha256": model.sha256, "data": str(data_dir)}
    if target_sensitivity is not None:
        extra["thresholds"] = pick_threshold(ev, target_sensitivity)
        threshold = extra["thresholds"]["at_target_sensitivity"]
    if threshold is None:
        threshold = float(model.metadata.get("threshold") or 0.5)
    summary = write_report(ev, out_dir, threshold, f"{data_dir.name} ({len(ev.predictions)} images)", extra)
    click.echo(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "n",
                    "threshold",
                    "roc_auc",
                    "sensitivity",
                    "specificity",
                    "balanced_accuracy",
                    "accuracy",
                )
            },
            indent=2,
        )
    )
    for failure in ev.failures:
        click.echo(f"{failure.path}  ERROR  {failure.reason}", err=True)
    if record_in is not None:
        from training.card import record_evaluation

        record_evaluation(record_in, eval_name or data_dir.name, summary)
        click.echo(f"recorded in {record_in / 'metrics.json'} and {record_in / 'MODEL_CARD.md'}")
    if store:
        learn = model.learner
        learn.xray_metadata = {
            **model.metadata,
            "threshold": threshold,
            "target_sensitivity": target_sensitivity,
        }
        learn.export(model_path.resolve())
        click.echo(
            f"stored threshold {threshold:.4f} in {model_path}; new SHA-256 {file_sha256(model_path)}: "
            f"export the bundle the worker screens with again (xray-train export {model_path} --out DIR) "
            "and update [model] sha256"
        )


@cli.command(name="site-check")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("site_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--target-sensitivity",
    default=0.95,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="The site threshold is the highest reaching this sensitivity (by --rule) on the sample.",
)
@click.option(
    "--rule",
    type=click.Choice(["wilson", "point"]),
    default="wilson",
    show_default=True,
    help="wilson: the lower 95% bound of sensitivity reaches the target (it holds on new patients); "
    "point: the sample's sensitivity does (the rule before December 2026).",
)
@click.option(
    "--min-specificity",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="An operating point whose specificity's lower 95% bound is below this is not deployable.",
)
@click.option(
    "--store",
    is_flag=True,
    help="If fit and deployable: store the site threshold and a site profile in the model file "
    "(its SHA-256 changes).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for site_check.json and reliability.png  [default: runs/site-check/NAME]",
)
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with columns file,label[,patient_id] (default: SITE_DIR/labels.csv if any, else folders).",
)
@click.option("--name", help="The site profile's name (default: the SITE_DIR folder name).")
@click.option("--sha256", default="", help="Expected SHA-256 of the model (else it is trusted as yours).")
@click.option(
    "--resamples", default=2000, show_default=True, type=click.IntRange(100), help="Bootstrap resamples."
)
@click.option("--seed", default=0, show_default=True, help="The bootstrap's seed.")
@click.option(
    "--calibrate",
    type=click.Choice(["platt", "temperature", "none"]),
    default="platt",
    show_default=True,
    help="Fit a calibration of P to the sample (platt: temperature and bias); --store keeps it.",
)
def site_check_command(
    model_path: Path,
    site_dir: Path,
    target_sensitivity: float,
    rule: str,
    min_specificity: float,
    store: bool,
    out_dir: Path | None,
    labels_csv: Path | None,
    name: str | None,
    sha256: str,
    resamples: int,
    seed: int,
    calibrate: str,
) -> None:
    """Is MODEL_PATH fit for a new site? Check it on the site's labelled sample SITE_DIR.

    SITE_DIR holds class folders (NORMAL/, PNEUMONIA/) or a labels.csv (file,label and,
    best, patient_id). Reports the ROC AUC with a 95% interval (bootstrap of patients: ids
    from the CSV or from Kermany file names; of films when there are none), sensitivity and
    specificity at the model's stored threshold (Wilson 95%), the operating point reaching
    --target-sensitivity here by --rule (and what the other rule would pick), calibration
    (ECE, reliability.png) and the gate's refusals. Thresholds lie between two films' scores,
    never on one. It fits a calibration of P to the sample (--calibrate) and reports its ECE on held-out
    patients (reliability-calibrated.png).

    The rule: NOT FIT when the lower bound of the AUC interval is below 0.90. Then --store
    refuses, as it does when the operating point is not deployable (the sensitivity interval
    cannot reach the target, or specificity's lower bound is below --min-specificity: the report
    says how many more labelled films would do); else it writes the site threshold, the
    calibration and a site profile into the model file; the threshold is on the calibrated
    scale, so it flags the same films.

    \b
    Example:
      xray-train site-check models/pneumonia-resnet18/export.pkl ../shared/data/site_sample
    """
    from training.baseline import store_baseline
    from training.card import refresh_model_card
    from training.site_check import report_lines, run_site_check, store_site_profile
    from worker.errors import ModelError
    from worker.model.learner import file_sha256, load_model

    try:
        model = load_model(model_path, sha256=sha256, trust=not sha256)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    out_dir = out_dir or Path("runs/site-check") / (name or site_dir.resolve().name)
    try:
        report = run_site_check(
            model,
            site_dir,
            out_dir,
            labels_csv=labels_csv,
            name=name or site_dir.resolve().name,
            target_sensitivity=target_sensitivity,
            resamples=resamples,
            seed=seed,
            calibrate=calibrate,
            rule=rule,
            min_specificity=min_specificity,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for line in report_lines(report, out_dir):
        click.echo(line)
    click.echo(f"wrote {out_dir / 'site_check.json'}")
    if store:
        if not report["verdict"]["fit"]:
            raise click.ClickException("not storing a site profile: the model is not fit for this site")
        try:
            store_site_profile(model, report)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        sha = file_sha256(model_path)
        if refresh_model_card(model_path.parent, model.learner.xray_metadata, sha, model.sha256):
            click.echo(f"updated {model_path.parent / 'MODEL_CARD.md'} and metrics.json")
        fitted = report["calibration"].get("fitted")
        threshold = fitted["threshold"] if fitted else report["at_target_sensitivity"]["threshold"]
        how = f"{fitted['method']} calibration, " if fitted else ""
        click.echo(
            f"stored site profile {report['site']!r} ({how}threshold {threshold:.4f}) in {model_path}; "
            f"new SHA-256 {sha}: export the bundle the worker screens with again "
            f"(xray-train export {model_path} --out DIR) and update [model] sha256"
        )
        click.echo(f"wrote {store_baseline(out_dir, model_path, sha)} (the reference for drift monitoring)")


@cli.command(name="adapt")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("site_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the adapted export.pkl, metrics.json and MODEL_CARD.md.",
)
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with columns file,label[,patient_id] (default: SITE_DIR/labels.csv if any, else folders).",
)
@click.option("--name", help="The site's name (default: the SITE_DIR folder name).")
@click.option("--epochs", default=12, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-3, show_default=True, help="Peak learning rate of the one-cycle schedule.")
@click.option(
    "--folds",
    default=5,
    show_default=True,
    type=click.IntRange(2, 20),
    help="Cross-fitting: each film is scored by a copy fine-tuned without its patient's fold; "
    "those scores set the calibration, the threshold and the gate's limit.",
)
@click.option("--seed", default=42, show_default=True)
@click.option(
    "--target-sensitivity", default=0.95, show_default=True, type=click.FloatRange(0, 1, min_open=True)
)
@click.option(
    "--rule",
    type=click.Choice(["wilson", "point"]),
    default="wilson",
    show_default=True,
    help="wilson: the lower 95% bound of sensitivity reaches the target; point: the films' sensitivity does.",
)
@click.option(
    "--min-specificity",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Refuse (write no model) when specificity's lower 95% bound is below this.",
)
@click.option("--calibrate", type=click.Choice(["platt", "temperature"]), default="platt", show_default=True)
@click.option("--sha256", default="", help="Expected SHA-256 of the model (else it is trusted as yours).")
def adapt_command(
    model_path: Path,
    site_dir: Path,
    out_dir: Path,
    labels_csv: Path | None,
    name: str | None,
    sha256: str,
    **options: Any,
) -> None:
    """Fine-tune MODEL_PATH on a site's labelled films SITE_DIR; write a new, adapted model.

    SITE_DIR is laid out as for site-check. Every film is used, by cross-fitting: its patients
    are dealt into --folds folds; a copy fine-tuned on the other folds scores each fold, and
    those scores (from models that never saw the patient) set the calibration, the operating
    point (--rule) and the gate's limit, and give the card's figures. The adapted model is
    then fine-tuned on all the films. When the operating point is not deployable (too few
    positives for the sensitivity interval, or specificity's lower bound under
    --min-specificity) no model is written: the card says how many more labelled films of
    each class it would take, and the exit status is 1. MODEL_PATH is not changed.

    \b
    Example:
      xray-train adapt models/pneumonia-resnet18/export.pkl ../shared/data/nih_site_sample --out runs/nih
    """
    from training.adapt import AdaptPlan, adapt_summary, run_adapt
    from worker.errors import ModelError
    from worker.model.learner import load_model

    try:
        model = load_model(model_path, sha256=sha256, trust=not sha256)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    plan = AdaptPlan(**options)
    try:
        facts = run_adapt(
            model,
            site_dir,
            out_dir,
            plan,
            labels_csv=labels_csv,
            name=name,
            progress=sys.stdout.isatty(),
            echo=click.echo,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for line in adapt_summary(facts):
        click.echo(line)
    if not facts["deployable"]:
        raise click.ClickException(
            f"no model written: its operating point is not deployable (wrote {out_dir / 'MODEL_CARD.md'}, "
            f"{out_dir / 'metrics.json'})"
        )
    click.echo(f"wrote {out_dir / 'export.pkl'}, {out_dir / 'MODEL_CARD.md'}")


@cli.command(name="gate")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--layers",
    default="0.4:grid3",
    show_default=True,
    help="Where the gate looks: 'penultimate' and/or module paths of the model (0.4: resnet layer1, "
    "0.6: layer3), each optionally ':gridN' (channel means on an N x N grid; else mean and std).",
)
@click.option(
    "--refuse-share",
    default=0.01,
    show_default=True,
    type=click.FloatRange(0.001, 0.2),
    help="The share of in-distribution validation films the limit refuses.",
)
@click.option("--valid-pct", default=0.2, show_default=True, help="As fit split the training folder.")
@click.option("--seed", default=42, show_default=True, help="As fit split the training folder.")
@click.option("--sha256", default="", help="Expected SHA-256 of the model (else it is trusted as yours).")
def gate_command(
    model_path: Path,
    data_dir: Path,
    layers: str,
    refuse_share: float,
    valid_pct: float,
    seed: int,
    sha256: str,
) -> None:
    """Fit the model's image gate on its training films and store it in the model file.

    The gate refuses films unlike those the model was trained on (docs/gate.md): class
    means and covariance of its features on the training split, a limit that refuses
    --refuse-share of the validation split. Give the folder and split the model was fit on.

    \b
    Example:
      xray-train gate runs/mine/export.pkl ../shared/data/chest_xray_224/train
    """
    from training.card import refresh_model_card
    from training.gate import fit_model_gate
    from worker.model.learner import file_sha256, load_model

    model = load_model(model_path, sha256=sha256, trust=not sha256)
    names = tuple(name.strip() for name in layers.split(",") if name.strip())
    fit = fit_model_gate(
        model, data_dir, layers=names, valid_pct=valid_pct, seed=seed, refuse_share=refuse_share
    )
    learn = model.learner
    learn.xray_metadata = {**model.metadata, "gate": fit.gate.to_metadata()}
    learn.export(model_path.resolve())
    click.echo(
        f"image gate over {', '.join(fit.gate.layer_names)}: limit {fit.gate.limit:.3f}, refuses "
        f"{fit.valid_refused:.1%} of {fit.valid_files} validation films "
        f"(fitted on {fit.train_files} training films in {fit.seconds:.0f} s)"
    )
    sha = file_sha256(model_path)
    click.echo(
        f"stored in {model_path}; new SHA-256 {sha}: export the bundle the worker screens with again "
        f"(xray-train export {model_path} --out DIR) and update [model] sha256"
    )
    if refresh_model_card(
        model_path.parent, learn.xray_metadata, sha, model.sha256, valid_refused=fit.valid_refused
    ):
        click.echo(f"updated {model_path.parent / 'MODEL_CARD.md'} and metrics.json")


@cli.command(name="export")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A new folder for the bundle (bundle.json, model.onnx, gate.npz, MODEL_CARD.md).",
)
@click.option(
    "--variant",
    type=click.Choice(["fp32", "int8", "fp16"]),
    default="fp32",
    show_default=True,
    help="fp32: the learner as it is. int8: static quantization calibrated on --calibration-dir "
    "(CPUs). fp16: half precision (GPUs). A reduced-precision variant must pass --validate.",
)
@click.option(
    "--calibration-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="int8: training films whose activations set the quantization ranges (searched recursively).",
)
@click.option("--calibration-films", default=512, show_default=True, help="int8: how many of them.")
@click.option(
    "--validate",
    "validate_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A labelled site folder (class subfolders, or labels.csv) to compare the variant with fp32 on; "
    "repeat for several. A variant is accepted at >= 99.5% label agreement and AUC within 0.002.",
)
@click.option("--sha256", default="", help="Expected SHA-256 of the learner (else it is trusted as yours).")
def export_command(
    model_path: Path,
    out_dir: Path,
    variant: str,
    calibration_dir: Path | None,
    calibration_films: int,
    validate_dirs: tuple[Path, ...],
    sha256: str,
) -> None:
    """Export a learner as a model bundle the worker runs with ONNX Runtime, without torch,
    fastai or pickle (docs/runtime.md).

    \b
    Examples:
      xray-train export models/pneumonia-resnet18/export.pkl --out models/pneumonia-resnet18/onnx
      xray-train export models/pneumonia-resnet18/export.pkl --out runs/int8 --variant int8 \\
          --calibration-dir ../shared/data/chest_xray_224/train \\
          --validate ../shared/data/site_sample --validate ../shared/data/nih_site_sample
    """
    from training.variants import export_variant

    if variant == "int8" and calibration_dir is None:
        raise click.UsageError("--variant int8 needs --calibration-dir (training films)")
    if variant != "fp32" and not validate_dirs:
        raise click.UsageError(f"--variant {variant} needs at least one --validate site folder")
    result = export_variant(
        model_path,
        out_dir,
        variant=variant,
        sha256=sha256,
        calibration_dir=calibration_dir,
        calibration_films=calibration_films,
        validate_dirs=validate_dirs,
    )
    for line in result.lines:
        click.echo(line)
    click.echo(f"bundle: {result.manifest}")
    click.echo(f"SHA-256 of bundle.json: {result.sha256} (set [model] path to the folder and sha256 to this)")
    if not result.accepted:
        click.echo(
            f"{variant} variant NOT accepted: see {result.manifest.parent / 'MODEL_CARD.md'}", err=True
        )
        sys.exit(1)


def main() -> None:
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  (per-epoch lines reach logs at once)
    try:
        cli(prog_name="xray-train")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in FULL_INSTALL_ONLY:
            sys.exit(f"Error: xray-train needs the full install (pip install 'xray-screen[full]'): {exc}")
        raise


# What the lean install (xray-screen[lean]) leaves out.
FULL_INSTALL_ONLY = {"torch", "torchvision", "fastai", "fastcore", "fasttransform", "onnx", "onnxscript"}
