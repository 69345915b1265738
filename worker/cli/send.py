"""``xray-worker send``: deliver the outbox to the PACS, the RIS and the EHR (worker/pacs/sender.py),
its own process."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import click

from worker.app import open_monitoring
from worker.cli.common import assignments_overrides, serve, settings_for


@click.command()
@click.option(
    "--destination",
    "names",
    multiple=True,
    metavar="NAME",
    help="Only this destination of [[pacs.destinations]], [[hl7.destinations]] or [[fhir.destinations]]"
    " (repeatable). Default: every destination.",
)
@click.option("--once", is_flag=True, help="Send what is due now, then exit (no waiting, no retries).")
@click.option("--batch-size", type=int, help="Objects per association. Default: [pacs] batch_size (50).")
@click.option("--db", "db_url", help="Database URL. Default: [database] url.")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Any other setting, e.g. --set pacs.poll_interval=2 (repeatable).",
)
@click.pass_context
def send(
    ctx: click.Context,
    names: tuple[str, ...],
    once: bool,
    batch_size: int | None,
    db_url: str | None,
    assignments: tuple[str, ...],
) -> None:
    """Deliver the results' DICOM objects to the PACS, ORUs to the RIS and Bundles to the EHR, until stopped.

    Objects and messages wait in the database's outbox, queued with their results; each
    destination of [pacs], [hl7] and [fhir] gets them in batches (one association or MLLP
    connection per batch, an HTTP POST per FHIR Bundle), with retries and backoff while it is
    down. SIGTERM finishes the batch in hand; a second one exits at once (what was not yet
    answered is sent again at the next start).

    \b
    Example:
      xray-worker send                       # every destination, until stopped
      xray-worker send --once --destination main
      xray-worker report deliveries          # what is pending, delivered, failed
    """
    overrides: dict[str, Any] = {"pacs.batch_size": batch_size, "database.url": db_url}
    overrides.update(assignments_overrides(assignments))
    settings = settings_for(ctx, **overrides)
    every = [*settings.pacs.destinations, *settings.hl7.destinations, *settings.fhir.destinations]
    if names:
        known = {d.name for d in every}
        unknown = sorted(set(names) - known)
        if unknown:
            raise click.BadParameter(
                f"{', '.join(unknown)}: not in the [pacs], [hl7] or [fhir] destinations "
                f"({', '.join(sorted(known)) or 'none'})",
                param_hint="--destination",
            )

    from worker.pacs.sender import open_sender  # pynetdicom: only for this command

    if once:
        handled = open_sender(settings, only=names).step()
        click.echo(f"{handled} objects handled; see `xray-worker report deliveries`")
        return
    with ExitStack() as stack:  # [metrics] endpoint, closed at the end
        monitoring = open_monitoring(stack, settings, notify=False)
        chosen = [d.name for d in every if not names or d.name in names]
        observer = monitoring.sender(chosen, lambda: sender.backlog())
        sender = open_sender(settings, only=names, observer=observer)
        serve(
            f"sending as {settings.pacs.ae_title} to {len(sender.destinations)} destinations",
            sender.run,
            sender.stop,
            finishing="finishing the batch in hand, then stopping",
            exiting="exiting now; unanswered objects are sent again",
        )
