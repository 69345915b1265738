"""``xray-worker watch`` (the inbox daemon) and ``xray-worker healthcheck``."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import click

from worker.cli.common import (
    ExitError,
    model_options,
    model_overrides,
    open_predictor,
    open_store,
    settings_for,
)
from worker.config import Settings
from worker.errors import ConfigError, ModelError, XrayScreenError
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
    for assignment in flags.pop("assignments"):
        key, sep, value = assignment.partition("=")
        if not sep or "." not in key:
            raise click.BadParameter(f"{assignment!r}: expected SECTION.KEY=VALUE", param_hint="--set")
        overrides[key.strip()] = value
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
    from worker.daemon import Daemon, Folders
    from worker.runtime.sdnotify import Notifier
    from worker.sources.claim import WorkArea, default_worker_id
    from worker.sources.inbox import Inbox

    settings = daemon_settings(ctx, flags)
    faults = _faults()
    box = dataclasses.replace(
        settings.inbox,
        path=box_path(settings.inbox.path),
        processed=box_path(settings.inbox.processed),
        failed=box_path(settings.inbox.failed),
    )
    os.umask(int(box.umask, 8))  # before anything is created: folders, sidecars, the database
    store = open_store(settings)
    predictor = open_predictor(settings)
    predictor.warm_up()
    try:
        for folder in (box.path, box.processed, box.failed):
            folder.mkdir(parents=True, exist_ok=True)
        work = WorkArea(box.path, box.worker_id or default_worker_id())
    except (OSError, ConfigError) as exc:
        raise ExitError(f"cannot use the inbox {box.path}: {exc}") from None
    daemon = Daemon(
        inbox=Inbox(
            box.path,
            recursive=box.recursive,
            ignore=box.ignore,
            stability_seconds=box.stability_seconds,
            polling=box.polling,
            poll_interval=box.poll_interval,
            rescan_interval=box.rescan_interval,
        ),
        work=work,
        predictor=predictor,
        store=store,
        folders=Folders(box.processed, box.failed, box.layout),
        batch_size=settings.inference.batch_size,
        max_wait=box.max_wait_ms / 1000,
        worker_host=socket.gethostname(),
        notifier=Notifier(),
        lease_seconds=box.lease_seconds,
        faults=faults,
    )
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


def _faults() -> Any:
    """Crash points for bench/chaos.py, from XRAY_SCREEN_FAULT (unset: none)."""
    from worker.runtime.faults import Faults

    try:
        return Faults.from_environ(os.environ)
    except ConfigError as exc:
        raise ExitError(str(exc)) from None


def box_path(path: Path) -> Path:
    """Absolute, so that the audit trail says exactly where files were and went."""
    return path.expanduser().absolute()


@click.command()
@inbox_options
@model_options
@click.pass_context
def healthcheck(ctx: click.Context, **flags: Any) -> None:
    """Check that `watch` could run: settings, folders, database, model. Exit 1 on any failure.

    \b
    Example:
      xray-worker --config /etc/xray-screen/config.toml healthcheck
      ok    settings valid (/etc/xray-screen/config.toml)
      ok    inbox /srv/xray/inbox writable
      ...
    """
    try:
        settings = daemon_settings(ctx, flags)
    except ExitError as exc:
        click.echo(f"FAIL  settings: {exc.message}")
        sys.exit(1)
    checks = [("settings valid" + (f" ({settings.source})" if settings.source else " (defaults)"), None)]
    box = settings.inbox
    for name, folder in (("inbox", box.path), ("processed", box.processed), ("failed", box.failed)):
        checks.append((f"{name} {folder} writable", _writable(folder)))
    checks.append(_database_check(settings))
    checks.append(_model_check(settings))
    failed = False
    for text, problem in checks:
        click.echo(f"ok    {text}" if problem is None else f"FAIL  {text}: {problem}")
        failed = failed or problem is not None
    sys.exit(1 if failed else 0)


def _writable(folder: Path) -> str | None:
    probe = folder / f".healthcheck-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _database_check(settings: Settings) -> tuple[str, str | None]:
    from worker.db.engine import safe_url
    from worker.db.store import Store

    text = f"database {safe_url(settings.database.url)} reachable and at head"
    try:
        store = Store(settings.database.url)
        try:
            store.require_head()
        finally:
            store.close()
    except XrayScreenError as exc:
        return text, str(exc)
    return text, None


def _model_check(settings: Settings) -> tuple[str, str | None]:
    text = f"model {settings.model.path} matches its pinned SHA-256 and loads"
    try:
        open_predictor(settings)
    except ExitError as exc:
        return text, exc.message
    except ModelError as exc:
        return text, str(exc)
    return text, None
