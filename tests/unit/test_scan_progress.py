"""What a scan prints (``worker/scan/progress.py``), from made-up counts: a rate only when
files were read; a rescan that skips every file says so without "0.0 images/s"."""

from __future__ import annotations

from worker.outcome import Outcome
from worker.pipeline.counts import Counts
from worker.scan.progress import status_line, summary_lines


def test_a_rescan_that_reads_nothing_has_no_rate():
    counts = Counts(skipped=6)
    lines = summary_lines(counts, 0.04)
    assert lines[0] == "scan done after 0.0 s: 0 files read"
    assert "  6 skipped (unchanged since the last scan)" in lines
    assert "images/s" not in "\n".join(lines)
    assert status_line(counts, 0.04) == "6 files: 0 screened, 0 duplicates, 6 skipped, 0 failed"


def test_a_scan_that_reads_files_gives_its_rate():
    counts = Counts(skipped=2)
    for _ in range(4):
        counts.add(Outcome.SCREENED)
    assert summary_lines(counts, 2.0)[0] == "scan done after 2.0 s: 4 files read, 2.0 images/s"
    assert status_line(counts, 2.0, limit=8) == (
        "6 files: 4 screened, 0 duplicates, 2 skipped, 0 failed | 2.0 images/s | ETA 2.0 s"
    )
