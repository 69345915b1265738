"""What the xray-worker commands share: errors mapped to exit codes (in one place), settings,
the model options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from worker import exitcodes
from worker.config import Settings, load_settings
from worker.errors import ConfigError, ModelError, PacsError, TransientError, UsageError


class ExitError(click.ClickException):
    """A mistake the operator can fix, with the process exit code it deserves."""

    def __init__(self, message: str, exit_code: int = exitcodes.CONFIG):
        super().__init__(message)
        self.exit_code = exit_code


class Commands(click.Group):
    """The command group whose ``invoke`` maps the project's errors to exit codes, for every
    command below it: the one place where an error becomes an exit status.

    ``ConfigError``/``ModelError``: 78 (fix the settings or the model); ``UsageError``: 2;
    ``TransientError``:
    75 (the database, the cluster or a PACS is unavailable: try again later); ``PacsError``: 69
    (a PACS refused what was asked).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, ModelError) as exc:
            raise ExitError(str(exc), exitcodes.CONFIG) from None
        except UsageError as exc:
            raise ExitError(str(exc), exitcodes.USAGE) from None
        except TransientError as exc:
            raise ExitError(str(exc), exitcodes.TEMPFAIL) from None
        except PacsError as exc:
            raise ExitError(str(exc), exitcodes.PACS) from None


def settings_for(ctx: click.Context, **overrides: Any) -> Settings:
    """Load the settings once, with this command's flags as the top layer (``ConfigError``)."""
    return load_settings(ctx.obj["config_path"], overrides=overrides)


def set_option(example: str) -> Any:
    """``--set SECTION.KEY=VALUE`` (repeatable, into ``assignments``), with an example of the command's."""
    return click.option(
        "--set",
        "assignments",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help=f"Any other setting, e.g. --set {example} (repeatable).",
    )


def assignments_overrides(assignments: Any) -> dict[str, str]:
    """``--set SECTION.KEY=VALUE`` options as settings overrides."""
    overrides = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or "." not in key:
            raise click.BadParameter(f"{assignment!r}: expected SECTION.KEY=VALUE", param_hint="--set")
        overrides[key.strip()] = value
    return overrides


def serve(ready: str, run: Any, stop: Any, *, finishing: str, exiting: str) -> None:
    """A long-running command's life: tell systemd it is ready, ``run()`` until the first
    SIGTERM/SIGINT calls ``stop()`` (logging ``finishing``), exit at once on a second one
    (logging ``exiting``), then tell systemd it is stopping."""
    import logging

    from worker.runtime.sdnotify import Notifier
    from worker.runtime.signals import two_stage_shutdown

    log = logging.getLogger("worker")
    notifier = Notifier()
    notifier.ready(ready)
    with two_stage_shutdown(
        stop,
        on_first=lambda name: log.info("%s: %s", name, finishing),
        on_second=lambda name: log.warning("%s again: %s", name, exiting),
    ):
        run()
    notifier.stopping()


def model_options(func: Any) -> Any:
    """The flags every command that runs the model shares."""
    options = [
        click.option(
            "--model",
            "model_path",
            type=click.Path(path_type=Path),
            help="A model bundle (its folder, from xray-train export) or an exported learner "
            "(export.pkl). Default: [model] path.",
        ),
        click.option(
            "--sha256",
            "model_sha256",
            help="Expected SHA-256 of the model (a bundle's bundle.json, or export.pkl).",
        ),
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


def model_overrides(flags: dict[str, Any]) -> dict[str, Any]:
    """The model flags as settings overrides (None leaves the lower layers alone)."""
    return {
        "model.path": flags.pop("model_path", None),
        "model.sha256": flags.pop("model_sha256", None),
        "model.trust": flags.pop("trust_model", None),
        "inference.device": flags.pop("device", None),
        "inference.batch_size": flags.pop("batch_size", None),
    }
