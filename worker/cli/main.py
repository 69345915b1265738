"""``xray-worker``: screen chest X-rays with an exported fastai learner."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click

from worker import __version__, exitcodes, logs
from worker.app import files_named, is_failure, open_predictor
from worker.cli.common import Commands, ExitError, model_options, model_overrides, settings_for
from worker.cli.db import db, report
from worker.cli.scan import scan
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
    help="Default: INFO for watch (one line per file and batch), WARNING otherwise.",
)
@click.version_option(__version__, prog_name="xray-worker")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, log_level: str | None) -> None:
    """Screen chest X-rays (PNG, JPEG, DICOM) for pneumonia with a fastai model.

    \b
    Example:
      xray-worker predict scans/             # every image below scans/
      xray-worker predict --json a.dcm b.png  # one JSON object per line
    """
    level = (log_level or ("INFO" if ctx.invoked_subcommand == "watch" else "WARNING")).upper()
    logs.configure(level)
    ctx.obj = {"config_path": config_path}


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, errors included.")
@click.pass_context
def predict(ctx: click.Context, paths: tuple[Path, ...], as_json: bool, **flags: Any) -> None:
    """Print the predicted label and every class probability for each file.

    Folders are searched recursively. A file that cannot be screened gets an error
    line; the others are still predicted, and the exit status is then 1.

    \b
    Example:
      xray-worker predict chest.jpeg
      chest.jpeg  PNEUMONIA  NORMAL=0.0269 PNEUMONIA=0.9731
    """
    from worker.names import as_fields, for_log

    settings = settings_for(ctx, **model_overrides(flags))
    predictor = open_predictor(settings)
    model = predictor.model
    rule = (
        f"{model.positive_class} when P({model.positive_class}) >= {predictor.threshold:.4f}"
        if predictor.threshold
        else "the most probable class"
    )
    click.echo(f"model {model.name} {model.version} (SHA-256 {model.sha256[:12]}...): {rule}", err=True)
    counts: Counter[str] = Counter()
    start = time.perf_counter()
    skipped: Counter[str] = Counter()
    for outcome in predictor.predict(files_named(paths, skipped)):
        if is_failure(outcome):
            counts["failed"] += 1
            if as_json:
                click.echo(json.dumps({**as_fields("path", str(outcome.path)), "error": outcome.reason}))
            else:
                click.echo(f"{for_log(str(outcome.path))}  ERROR  {outcome.reason}", err=True)
            continue
        counts[outcome.label] += 1
        if as_json:
            click.echo(json.dumps(_prediction_record(outcome, predictor)))
        else:
            probs = " ".join(f"{name}={p:.4f}" for name, p in outcome.probabilities.items())
            click.echo(f"{for_log(str(outcome.path))}  {outcome.label}  {probs}")
    seconds = time.perf_counter() - start
    total = sum(counts.values())
    summary = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
    rate = f" ({total / seconds:.1f} images/s)" if seconds > 0 and total else ""
    click.echo(
        f"{total} files in {seconds:.1f} s{rate} on {predictor.device_name}: {summary or 'none'}", err=True
    )
    if total == 0:
        why = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))
        raise ExitError(
            f"no files to screen under the given paths{f' (skipped: {why})' if why else ''}",
            exitcodes.SOME_FILES_FAILED,
        )
    if skipped:
        click.echo("skipped: " + ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items())), err=True)
    if counts["failed"]:
        sys.exit(exitcodes.SOME_FILES_FAILED)


def _prediction_record(outcome: Any, predictor: Any) -> dict[str, Any]:
    from worker.names import as_fields

    decoded = outcome.decoded
    record: dict[str, Any] = {
        **as_fields("path", str(outcome.path)),
        "label": outcome.label,
        "probabilities": outcome.probabilities,
        "positive_class": predictor.model.positive_class,
        "positive_probability": outcome.positive_probability,
        "format": decoded.format,
        "width": decoded.width,
        "height": decoded.height,
        "model_sha256": predictor.model.sha256,
        "preprocessing": predictor.model.preprocessing.version,
    }
    if decoded.dicom is not None:
        record["sop_instance_uid"] = decoded.dicom.sop_instance_uid
        record["modality"] = decoded.dicom.modality
    return record


cli.add_command(db)
cli.add_command(report)
cli.add_command(watch)
cli.add_command(healthcheck)
cli.add_command(scan)


def main() -> None:
    import warnings

    # fastai's import touches torch.jit.script, deprecated in recent torch: not the user's concern.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    cli(prog_name="xray-worker")


if __name__ == "__main__":
    main()
