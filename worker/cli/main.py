"""``xray-worker``: screen chest X-rays with a model bundle (ONNX) or an exported fastai learner."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from worker import __version__, logs
from worker.app import predict_files
from worker.cli.common import Commands, model_options, model_overrides, settings_for
from worker.cli.db import db, report
from worker.cli.pull import pull
from worker.cli.receive import receive
from worker.cli.scan import scan
from worker.cli.send import send
from worker.cli.watch import healthcheck, watch

log = logging.getLogger("worker")


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Settings file (default: $XRAY_SCREEN_CONFIG, else built-in defaults).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Default: INFO for watch and receive (one line per file, batch, association), WARNING otherwise.",
)
@click.version_option(__version__, prog_name="xray-worker")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, log_level: str | None) -> None:
    """Screen chest X-rays (PNG, JPEG, DICOM) for pneumonia.

    The model is a bundle (ONNX Runtime: the shipped one, or one from xray-train export) or an
    exported fastai learner (export.pkl, with the full install): [model] path, or --model.

    \b
    Example:
      xray-worker predict scans/             # every image below scans/
      xray-worker predict --json a.dcm b.png  # one JSON object per line
    """
    level = (
        log_level or ("INFO" if ctx.invoked_subcommand in ("watch", "receive", "send") else "WARNING")
    ).upper()
    logs.configure(level)
    ctx.obj = {"config_path": config_path}


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, errors included.")
@click.option(
    "--heatmaps",
    "heatmap_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write a Grad-CAM heatmap (PNG) of each positive film under DIR/<date>/ and print its path.",
    metavar="DIR",
)
@click.option(
    "--heatmaps-for",
    type=click.Choice(["positives", "all"]),
    default="positives",
    show_default=True,
    help="Which screened films get a heatmap (with --heatmaps).",
)
@click.pass_context
def predict(
    ctx: click.Context,
    paths: tuple[Path, ...],
    as_json: bool,
    heatmap_dir: Path | None,
    heatmaps_for: str,
    **flags: Any,
) -> None:
    """Print the predicted label and every class probability for each file.

    Folders are searched recursively. A file that cannot be screened gets an error
    line; the others are still predicted, and the exit status is then 1. With
    --heatmaps, each positive film (every film with --heatmaps-for all) also gets a
    heatmap of where the model found its evidence: not for diagnosis (docs/heatmaps.md).

    \b
    Example:
      xray-worker predict chest.jpeg
      chest.jpeg  PNEUMONIA  NORMAL=0.0269 PNEUMONIA=0.9731
      xray-worker predict --heatmaps maps/ chest.jpeg
      chest.jpeg  PNEUMONIA  NORMAL=0.0269 PNEUMONIA=0.9731  heatmap=maps/2025-01-31/3f2a....png
    """
    settings = settings_for(ctx, **model_overrides(flags))
    out, err = sys.stdout, sys.stderr
    sys.exit(
        predict_files(
            settings, paths, out, err, as_json=as_json, heatmaps=heatmap_dir, heatmaps_for=heatmaps_for
        )
    )


cli.add_command(db)
cli.add_command(report)
cli.add_command(watch)
cli.add_command(healthcheck)
cli.add_command(scan)
cli.add_command(receive)
cli.add_command(send)
cli.add_command(pull)


def main() -> None:
    import warnings

    # fastai's import touches torch.jit.script, deprecated in recent torch: not the user's concern.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    cli(prog_name="xray-worker")


if __name__ == "__main__":
    main()
