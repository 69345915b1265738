"""``xray-worker receive``: the DICOM Storage SCP (worker/receive/), in front of ``watch``."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from worker.app import open_monitoring
from worker.cli.common import assignments_overrides, serve, settings_for

# flag name -> the [receive] key it sets
_KEYS = {
    "host": "host",
    "port": "port",
    "ae_title": "ae_title",
    "allow": "allowed_aets",
    "max_pdu": "max_pdu",
    "association_timeout": "association_timeout",
    "idle_timeout": "idle_timeout",
    "max_instance_bytes": "max_instance_bytes",
    "max_associations": "max_associations",
    "secondary_capture": "secondary_capture",
    "tls_cert": "tls_cert",
    "tls_key": "tls_key",
    "tls_ca": "tls_ca",
}


@click.command()
@click.option(
    "--inbox",
    "inbox_path",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where instances are written (watch's inbox). Default: [inbox] path.",
)
@click.option("--host", help="Address to listen on (0.0.0.0: every interface). Default: 127.0.0.1.")
@click.option("--port", type=int, help="TCP port. Default: 11112.")
@click.option("--ae-title", help="Our AE title, the one senders call. Default: XRAY_SCREEN.")
@click.option(
    "--allow",
    multiple=True,
    metavar="AET[@IP]",
    help="A calling AE title allowed to send, optionally only from that address (repeatable). "
    "Default: [receive] allowed_aets; none: anyone.",
)
@click.option("--max-pdu", type=int, help="Largest PDU received, bytes. Default: 131072.")
@click.option("--association-timeout", type=float, help="Seconds to wait for a request or release.")
@click.option("--idle-timeout", type=float, help="Seconds an association may stay silent. Default: 60.")
@click.option("--max-instance-bytes", type=int, help="Refuse larger instances (0xA700). Default: 256 MiB.")
@click.option("--max-associations", type=int, help="Associations served at once. Default: 8.")
@click.option(
    "--secondary-capture/--no-secondary-capture",
    default=None,
    help="Also accept Secondary Capture images. Default: no.",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="TLS: our certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="TLS: our private key (PEM).")
@click.option(
    "--tls-ca", type=click.Path(dir_okay=False), help="TLS: peers must present a certificate from this CA."
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Any other setting, e.g. --set inbox.umask=007 (repeatable).",
)
@click.pass_context
def receive(ctx: click.Context, inbox_path: Path | None, assignments: tuple[str, ...], **flags: Any) -> None:
    """Receive X-rays from modalities and PACS (DICOM C-STORE) into the inbox, until stopped.

    Answers C-ECHO and C-STORE of CR and DX images; each instance is written into the inbox
    as <SOPInstanceUID>.dcm and answered Success once it is safely on disk. Run `watch` on
    the same inbox to screen them. SIGTERM stops taking associations and lets the ones in
    progress finish; a second one exits at once.

    \b
    Example:
      xray-worker receive --host 0.0.0.0 --port 11112 --ae-title XRAY_SCREEN \\
                          --allow MODALITY1@10.0.0.5 --inbox /srv/xray/inbox
    """
    overrides: dict[str, Any] = {"inbox.path": inbox_path}
    for flag, key in _KEYS.items():
        value = flags.pop(flag)
        overrides[f"receive.{key}"] = (value or None) if flag == "allow" else value
    overrides.update(assignments_overrides(assignments))
    settings = settings_for(ctx, **overrides)

    from worker.receive import open_receiver  # pynetdicom: only for this command

    with ExitStack() as stack:  # [metrics] endpoint, closed at the end
        monitoring = open_monitoring(stack, settings, notify=False)
        receiver = open_receiver(settings)
        receiver.observer = monitoring.receiver(lambda: receiver.active) or receiver.observer
        receiver.start()
        host, port = receiver.address
        serve(
            f"receiving as {settings.receive.ae_title} on {host}:{port}",
            receiver.run,
            receiver.stop,
            finishing="finishing the associations in progress, then stopping",
            exiting="exiting now; unanswered instances are resent",
        )
