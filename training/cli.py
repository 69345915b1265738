"""``xray-train``: train and evaluate the pneumonia screening model."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import click

from training import app
from worker import __version__


class Commands(click.Group):
    """The command group that turns what a command cannot do (``training.app.CommandError``)
    into ``Error: ...`` and exit status 1, for every command below it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except app.CommandError as exc:
            raise click.ClickException(str(exc)) from None


def operating_point_options(command: Any) -> Any:
    """--rule and --min-specificity: how site-check and adapt choose an operating point, and when
    they refuse it (training/operating.py)."""
    command = click.option(
        "--min-specificity",
        default=0.5,
        show_default=True,
        type=click.FloatRange(0, 1),
        help="An operating point whose specificity's lower 95% bound is below this is not deployable "
        "(site-check --store refuses it; adapt writes no model).",
    )(command)
    return click.option(
        "--rule",
        type=click.Choice(["wilson", "point"]),
        default="wilson",
        show_default=True,
        help="wilson: the lower 95% bound of sensitivity reaches the target (it holds on new patients); "
        "point: the sample's sensitivity does (the rule before December 2026).",
    )(command)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    app.fit(
        data_dir,
        out_dir,
        options,
        name=name,
        positive_class=positive_class,
        target_sensitivity=target_sensitivity,
        progress=sys.stdout.isatty(),
        echo=click.echo,
    )


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
def evaluate_command(target_sensitivity: float | None, store: bool, **options: Any) -> None:
    """Evaluate MODEL_PATH on a labelled folder, through the worker's inference path.

    \b
    Example:
      xray-train evaluate models/pneumonia-resnet18/export.pkl ../shared/data/chest_xray_full/val --out eval/
      xray-train evaluate export.pkl ../shared/data/dicom --labels ../shared/data/dicom/labels.csv --out eval/
    """
    if store and target_sensitivity is None:
        raise click.UsageError("--store needs --target-sensitivity")
    app.evaluate(target_sensitivity=target_sensitivity, store=store, echo=click.echo, **options)


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
@operating_point_options
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
    app.site_check(
        model_path,
        site_dir,
        out_dir,
        sha256=sha256,
        name=name,
        store=store,
        echo=click.echo,
        labels_csv=labels_csv,
        target_sensitivity=target_sensitivity,
        resamples=resamples,
        seed=seed,
        calibrate=calibrate,
        rule=rule,
        min_specificity=min_specificity,
    )


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
@operating_point_options
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
    app.adapt(
        model_path,
        site_dir,
        out_dir,
        sha256=sha256,
        labels_csv=labels_csv,
        name=name,
        progress=sys.stdout.isatty(),
        echo=click.echo,
        **options,
    )


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
    app.fit_gate(
        model_path,
        data_dir,
        layers=[name.strip() for name in layers.split(",") if name.strip()],
        refuse_share=refuse_share,
        valid_pct=valid_pct,
        seed=seed,
        sha256=sha256,
        echo=click.echo,
    )


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
    if variant == "int8" and calibration_dir is None:
        raise click.UsageError("--variant int8 needs --calibration-dir (training films)")
    if variant != "fp32" and not validate_dirs:
        raise click.UsageError(f"--variant {variant} needs at least one --validate site folder")
    accepted = app.export(
        model_path,
        out_dir,
        variant=variant,
        echo=click.echo,
        sha256=sha256,
        calibration_dir=calibration_dir,
        calibration_films=calibration_films,
        validate_dirs=validate_dirs,
    )
    if not accepted:
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
