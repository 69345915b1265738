"""What the xray-worker commands share: errors with exit codes, settings, the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from worker import exitcodes
from worker.config import Settings, load_settings
from worker.errors import ConfigError, ModelError


class ExitError(click.ClickException):
    """A mistake the operator can fix, with the process exit code it deserves."""

    def __init__(self, message: str, exit_code: int = exitcodes.CONFIG):
        super().__init__(message)
        self.exit_code = exit_code


def settings_for(ctx: click.Context, **overrides: Any) -> Settings:
    """Load the settings once, with this command's flags as the top layer."""
    try:
        return load_settings(ctx.obj["config_path"], overrides=overrides)
    except ConfigError as exc:
        raise ExitError(str(exc)) from None


def model_options(func: Any) -> Any:
    """The flags every command that runs the model shares."""
    options = [
        click.option(
            "--model",
            "model_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Exported learner (export.pkl). Default: [model] path.",
        ),
        click.option("--sha256", "model_sha256", help="Expected SHA-256 of the model file."),
        click.option(
            "--trust-model",
            is_flag=True,
            default=None,
            help="Load the model without checking its SHA-256 (only for files you made).",
        ),
        click.option(
            "--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Default: [inference] device."
        ),
        click.option(
            "--batch-size", type=int, help="Images per model call. Default: [inference] batch_size."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def open_model(settings: Settings) -> Any:
    """Load the model, refused unless its SHA-256 is the configured one (exit 78)."""
    from worker.model.learner import load_model

    m = settings.model
    try:
        return load_model(m.path, sha256=m.expected_sha256(), trust=m.trust, positive_class=m.positive_class)
    except ModelError as exc:
        raise ExitError(str(exc)) from None


def decode_limits(settings: Settings) -> Any:
    from worker.decode import Limits

    return Limits(settings.decode.max_pixels, settings.decode.max_side, settings.decode.min_side)


def open_predictor(settings: Settings) -> Any:
    """Load the model (checked) and build the batched predictor."""
    from worker.model.predictor import Predictor

    model = open_model(settings)
    try:
        return Predictor(model, settings.inference, decode_limits(settings))
    except (ModelError, ConfigError) as exc:
        raise ExitError(str(exc)) from None


def model_overrides(flags: dict[str, Any]) -> dict[str, Any]:
    """The model flags as settings overrides (None leaves the lower layers alone)."""
    return {
        "model.path": flags.pop("model_path", None),
        "model.sha256": flags.pop("model_sha256", None),
        "model.trust": flags.pop("trust_model", None),
        "inference.device": flags.pop("device", None),
        "inference.batch_size": flags.pop("batch_size", None),
    }


def open_store(settings: Settings) -> Any:
    """The results database, refused unless at head (exit 78) or reachable (exit 75)."""
    from worker.db.engine import safe_url
    from worker.db.store import Store
    from worker.errors import TransientError

    try:
        store = Store(settings.database.url, store_patient_ids=settings.database.store_patient_ids)
        store.require_head()
    except ConfigError as exc:
        raise ExitError(str(exc)) from None
    except TransientError as exc:
        raise ExitError(f"{safe_url(settings.database.url)}: {exc}", exitcodes.TEMPFAIL) from None
    return store
