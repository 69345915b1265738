"""Prometheus metrics (``[metrics]``, docs/monitoring.md), with prometheus-client.

Each process has a registry of its own (no module-level global), served on its own
``[metrics] listen`` address, or, for a scan, written once at the end in node_exporter's
textfile format:

- ``endpoint.py``: the registry with the process collectors, and its HTTP endpoint;
- ``pipeline.py``: ``PipelineMetrics``, the pipeline's observer (files by outcome, verdicts
  by label, decode/inference/commit/latency histograms, backlog gauges, the model);
- ``receiver.py`` and ``sender.py``: the DICOM receiver's and the PACS sender's metrics;
- ``notify.py``: the webhook dispatcher's counts;
- ``textfile.py``: a scan's summary file;
- ``catalog.py``: every metric name the code exports (the docs' test reads it).

Nothing here is imported by the pipeline: the front ends are handed these objects by
``worker/app.py``.
"""
