"""``xray-worker receive``'s metrics: the receiver's observer (``worker/receive/scp.py``).

- ``xray_screen_receive_instances_total{outcome,reason}``: instances ``stored``, or
  ``refused`` with the DIMSE status's name as ``reason``;
- ``xray_screen_receive_bytes_total``: bytes of the instances stored;
- ``xray_screen_receive_associations_total{ending}``: connections ended, by how
  (``released``, ``aborted``, ``rejected``, ``lost``, ``not_requested``, ``turned_away``: over
  ``max_connections_per_peer``, closed in the accept loop);
- ``xray_screen_receive_associations_active``: connections open now.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

# The statuses the receiver answers a refusal with (worker/receive/store.py, scp.py).
REASONS = {0xA700: "out_of_resources", 0xC000: "cannot_understand"}
# scp.py's endings, as label values.
ENDINGS = {
    "released": "released",
    "aborted": "aborted",
    "rejected": "rejected",
    "connection lost or timed out": "lost",
    "closed before an association request": "not_requested",
    "turned away": "turned_away",
}


class ReceiverMetrics:
    """The receiver's counters in ``registry``; ``active()`` gives the open connections."""

    def __init__(self, registry: CollectorRegistry, active: Callable[[], float] | None = None):
        self.instances = Counter(
            "xray_screen_receive_instances",
            "DICOM instances received: stored, or refused by reason.",
            ["outcome", "reason"],
            registry=registry,
        )
        self.instances.labels("stored", "")
        self.bytes = Counter("xray_screen_receive_bytes", "Bytes of the instances stored.", registry=registry)
        self.associations = Counter(
            "xray_screen_receive_associations",
            "Connections ended, by how they ended.",
            ["ending"],
            registry=registry,
        )
        if active is not None:
            Gauge(
                "xray_screen_receive_associations_active", "Connections open now.", registry=registry
            ).set_function(active)

    def stored(self, size: int) -> None:
        self.instances.labels("stored", "").inc()
        self.bytes.inc(size)

    def refused(self, status: int) -> None:
        self.instances.labels("refused", REASONS.get(status, f"0x{status:04X}")).inc()

    def closed(self, ending: str) -> None:
        self.associations.labels(ENDINGS.get(ending, "other")).inc()
