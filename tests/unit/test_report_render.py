"""Reports as a person reads them: plain numbers, no rate where there is no time to divide by.
Made-up rows, no database (``tests/integration/test_db_report.py`` reads real ones)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.db.render import plain, render
from worker.db.report import WORKER_COLUMNS, Report, Section, files_per_second

T0 = datetime(2026, 12, 2, 12, 17, tzinfo=UTC)


def test_no_rate_over_less_than_a_second():
    """A scan's six files committed 43 ms apart are not 139,500 files a second."""
    assert files_per_second(6, T0, T0 + timedelta(milliseconds=43)) is None
    assert files_per_second(6, T0, T0 + timedelta(seconds=0.999)) is None
    assert files_per_second(1, T0, T0) is None
    assert files_per_second(6, T0, T0 + timedelta(seconds=1)) == 6.0
    assert files_per_second(121, T0, T0 + timedelta(seconds=6)) == 20.17


@pytest.mark.parametrize(
    ("value", "table", "csv"),
    [
        (139500.0, "139500", "139500.0"),
        (133333.33, "133333", "133333.33"),
        (9999.6, "10000", "9999.6"),
        (26.01, "26.01", "26.01"),
        (0.7688, "0.7688", "0.7688"),
        (2.0, "2", "2.0"),
        (0.00001234, "0.00001234", "0.00001234"),
        (1e-05, "0.00001", "0.00001"),
    ],
)
def test_numbers_are_plain(value: float, table: str, csv: str):
    assert plain(value) == table
    assert plain(value, None) == csv


def test_a_report_never_prints_scientific_notation():
    row = ("vm", "scan", 6, 4, 0, 0, T0, T0, 139500.0)
    report = Report(
        "xray-screen summary", None, T0, sections=[Section("workers", "Work", WORKER_COLUMNS, [row])]
    )
    for fmt in ("table", "csv"):
        text = render(report, fmt)
        assert "139500" in text and "e+" not in text, text
