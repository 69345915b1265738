"""``xray-worker watch`` (the inbox daemon) and ``xray-worker healthcheck``."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from worker.app import build_daemon, faults_from_environ, open_monitoring, open_predictor
from worker.app_db import database_check
from worker.cli.common import assignments_overrides, model_options, model_overrides, settings_for
from worker.config import Settings
from worker.errors import ConfigError, ModelError
from worker.runtime.signals import two_stage_shutdown

log = logging.getLogger("worker")


def inbox_options(func: Any) -> Any:
    options = [
        click.option(
            "--inbox",
            "inbox_path",
            type=click.Path(file_okay=False, path_type=Path),
            help="Folder to watch. Default: [inbox] path.",
        ),
        click.option(
            "--processed",
            type=click.Path(file_okay=False, path_type=Path),
            help="Where screened files go. Default: [inbox] processed.",
        ),
        click.option(
            "--failed",
            type=click.Path(file_okay=False, path_type=Path),
            help="Where unreadable files go. Default: [inbox] failed.",
        ),
        click.option("--db", "db_url", metavar="URL", help="Results database URL. Default: [database] url."),
        click.option(
            "--polling/--inotify", default=None, help="Poll the inbox (network shares) or use inotify."
        ),
        click.option("--recursive/--no-recursive", default=None, help="Also take files from subfolders."),
        click.option("--worker-id", help="Unique per worker sharing an inbox. Default: the host name."),
        click.option(
            "--set",
            "assignments",
            multiple=True,
            metavar="SECTION.KEY=VALUE",
            help="Any other setting, e.g. --set inbox.stability_seconds=5 (repeatable).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def daemon_settings(ctx: click.Context, flags: dict[str, Any]) -> Settings:
    overrides = model_overrides(flags)
    overrides.update(
        {
            "inbox.path": flags.pop("inbox_path"),
            "inbox.processed": flags.pop("processed"),
            "inbox.failed": flags.pop("failed"),
            "database.url": flags.pop("db_url"),
            "inbox.polling": flags.pop("polling"),
            "inbox.recursive": flags.pop("recursive"),
            "inbox.worker_id": flags.pop("worker_id"),
        }
    )
    overrides.update(assignments_overrides(flags.pop("assignments")))
    return settings_for(ctx, **overrides)


@click.command()
@inbox_options
@model_options
@click.pass_context
def watch(ctx: click.Context, **flags: Any) -> None:
    """Screen every X-ray dropped into the inbox, until stopped (SIGTERM or Ctrl-C).

    Each file is claimed, screened, recorded in the database and moved to
    processed/<LABEL>/<date>/ or failed/<date>/ (with a .error.json saying why).
    The first SIGTERM finishes the batch in hand; a second one exits at once.

    \b
    Example:
      xray-worker watch --inbox /srv/xray/inbox --processed /srv/xray/processed \\
                        --failed /srv/xray/failed --db sqlite:////var/lib/xray-screen/results.db
    """
    settings = daemon_settings(ctx, flags)
    with ExitStack() as stack:  # [metrics] endpoint and [notify] webhooks, closed at the end
        monitoring = open_monitoring(stack, settings)
        daemon = build_daemon(settings, faults=faults_from_environ(), monitoring=monitoring)
        with two_stage_shutdown(
            daemon.stop,
            on_first=lambda name: log.info(
                "%s: finishing the current batch, then stopping (again to exit at once)", name
            ),
            on_second=lambda name: log.warning(
                "%s again: exiting now; claimed files are recovered at the next start", name
            ),
        ):
            daemon.run()


@click.command()
@inbox_options
@model_options
@click.pass_context
def healthcheck(ctx: click.Context, **flags: Any) -> None:
    """Check that `watch` could run: settings, folders, database, model. Exit 1 on any failure.

    A folder that does not exist yet passes when watch can create it, as it does when it
    starts; a relative folder is relative to the working directory (the line says which).

    \b
    Example:
      xray-worker --config /etc/xray-screen/config.toml healthcheck
      ok    settings valid (/etc/xray-screen/config.toml)
      ok    inbox /srv/xray/inbox writable
      ...
    """
    try:
        settings = daemon_settings(ctx, flags)
    except ConfigError as exc:
        click.echo(f"FAIL  settings: {exc}")
        sys.exit(1)
    checks = [("settings valid" + (f" ({settings.source})" if settings.source else " (defaults)"), None)]
    box = settings.inbox
    for name, folder in (("inbox", box.path), ("processed", box.processed), ("failed", box.failed)):
        checks.append(folder_check(name, folder))
    checks.append(database_check(settings))
    checks.append(_model_check(settings))
    failed = False
    for text, problem in checks:
        click.echo(f"ok    {text}" if problem is None else f"FAIL  {text}: {problem}")
        failed = failed or problem is not None
    sys.exit(1 if failed else 0)


def folder_check(name: str, folder: Path) -> tuple[str, str | None]:
    """Whether ``watch`` can use ``folder``: (what was checked, the problem or None).

    A folder that is there must take a new file. One that is not there yet passes when
    ``watch`` can create it (it does, at start): when a folder can be made in its nearest
    existing parent. The check itself creates nothing. A relative path is relative to the
    working directory, which the text names, since a service's may not be the shell's.
    """
    where = shown_folder(folder)
    if folder.is_dir():
        return f"{name} {where} writable", _writable(folder)
    if os.path.lexists(folder):  # a file, or a link to nothing
        return f"{name} {where} writable", "it is not a folder"
    parent = folder.resolve().parent
    while not os.path.lexists(parent):
        parent = parent.parent
    problem = _writable(parent, folder_probe=True) if parent.is_dir() else "not a folder"
    if problem is None:
        return f"{name} {where} does not exist yet: watch will create it ({parent} is writable)", None
    return f"{name} {where} does not exist, and watch could not create it", f"{parent}: {problem}"


def shown_folder(folder: Path) -> str:
    """``folder`` as given, and when relative, what it is relative to and where that makes it."""
    if folder.is_absolute():
        return str(folder)
    return f"{folder} (relative to the working directory: {folder.resolve()})"


def _writable(folder: Path, *, folder_probe: bool = False) -> str | None:
    """None when a file (or, with ``folder_probe``, a folder) can be created in ``folder``."""
    probe = folder / f".healthcheck-{uuid.uuid4().hex}"
    try:
        if folder_probe:
            probe.mkdir()
            probe.rmdir()
        else:
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _model_check(settings: Settings) -> tuple[str, str | None]:
    text = f"model {settings.model.path} matches its pinned SHA-256 and loads"
    try:
        open_predictor(settings)
    except (ModelError, ConfigError) as exc:
        return text, str(exc)
    return text, None
