"""Where files and verdicts go after their commit: moved into processed/ or failed/
(``filing``), or written to a scan's ``--output`` file (``results_file``)."""
