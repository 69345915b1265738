"""A scan's summary as a node_exporter textfile (``[metrics] textfile``, ``scan --metrics-file``).

A nightly scan is not running when Prometheus scrapes, so it leaves its numbers in a file
that node_exporter's textfile collector serves (``--collector.textfile.directory``; the name
must end in ``.prom``). The file is replaced atomically at the end of each run: its counters
(``xray_screen_files_total``, ...) count that run's files, and these gauges say how it went:

- ``xray_screen_scan_skipped_files``: files skipped unread (unchanged since a scan by the model);
- ``xray_screen_scan_duration_seconds``: the run's wall time;
- ``xray_screen_scan_exit_code``: its exit status (0 done, 75 database unavailable, 130 stopped);
- ``xray_screen_scan_last_run_timestamp_seconds``: when it ended (Unix time).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from worker.metrics.endpoint import registry as new_registry
from worker.metrics.pipeline import PipelineMetrics

log = logging.getLogger(__name__)


class ScanSummary(PipelineMetrics):
    """The pipeline's metrics of one scan, and its summary gauges; ``write()`` at the end."""

    def __init__(self, path: Path, registry: CollectorRegistry | None = None):
        super().__init__(registry or new_registry(process=False))  # a scan's process is gone by then
        self.path = path
        if path.suffix != ".prom":
            log.warning("metrics file %s: node_exporter's textfile collector only reads *.prom files", path)
        self.skipped = Gauge(
            "xray_screen_scan_skipped_files", "Files a scan skipped unread.", registry=self.registry
        )
        self.duration = Gauge(
            "xray_screen_scan_duration_seconds", "A scan's wall time.", registry=self.registry
        )
        self.exit_code = Gauge("xray_screen_scan_exit_code", "A scan's exit status.", registry=self.registry)
        self.ended = Gauge(
            "xray_screen_scan_last_run_timestamp_seconds",
            "When the last scan ended (Unix time).",
            registry=self.registry,
        )

    def write(self, *, skipped: int, seconds: float, exit_code: int) -> bool:
        """Replace the file with this run's numbers; False (logged) if it cannot be written: the
        scan's work is committed all the same, and its summary still printed."""
        self.skipped.set(skipped)
        self.duration.set(seconds)
        self.exit_code.set(exit_code)
        self.ended.set(time.time())
        try:
            write_to_textfile(str(self.path), self.registry)
        except OSError as exc:
            log.error("cannot write the metrics file %s: %s", self.path, exc.strerror or exc)
            return False
        return True
