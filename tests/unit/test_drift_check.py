"""The drift check on made-up samples: periods, too few films, the table and the baseline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from worker.drift import periods
from worker.drift.check import ALARM, OK, TOO_FEW, compare
from worker.drift.output import as_dict, as_table
from worker.drift.sample import SIZE_CLASSES, Sample, baseline, size_class
from worker.errors import UsageError

NOW = datetime(2026, 12, 2, 6, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", NOW - timedelta(days=7)),
        ("12h", NOW - timedelta(hours=12)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2w", NOW - timedelta(weeks=2)),
        ("2025-11-01", datetime(2025, 11, 1, tzinfo=UTC)),
        ("2025-11-01T08:30+01:00", datetime(2025, 11, 1, 7, 30, tzinfo=UTC)),
        ("all", None),
    ],
)
def test_since_accepts_durations_dates_and_all(text: str, expected: datetime | None):
    assert periods.parse_since(text, NOW) == expected


def test_since_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="not a duration"):
        periods.parse_since("last tuesday", NOW)


def test_the_window_ends_now():
    w = periods.window("7d", NOW)
    assert (w.start, w.end) == (NOW - timedelta(days=7), NOW)
    assert periods.window("48h", NOW).start == NOW - timedelta(hours=48)


@pytest.mark.parametrize("text", ["7", "0d", "a week", "-3d"])
def test_a_bad_window_is_refused(text: str):
    with pytest.raises(UsageError, match="not a duration"):
        periods.window(text, NOW)


def test_references():
    recent = periods.window("7d", NOW)
    assert periods.reference("site-profile", recent) is None
    month = periods.reference("2026-10-01..2026-10-31", recent)
    assert (month.start, month.end) == (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
    before = periods.reference("28d", recent)
    assert (before.start, before.end) == (recent.start - timedelta(days=28), recent.start)
    hours = periods.reference("2026-11-01T08:00..2026-11-02T08:00+01:00", recent)
    assert hours.end == datetime(2026, 11, 2, 7, 0, tzinfo=UTC)  # a time is not widened to its day


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-11-01..2026-11-30", "overlaps the window"),
        ("2026-11-30..2026-11-01", "ends before it starts"),
        ("november..december", "not an ISO date"),
        ("last month", "use site-profile, a period"),
    ],
)
def test_bad_references_are_refused(text: str, message: str):
    with pytest.raises(UsageError, match=message):
        periods.reference(text, periods.window("7d", NOW))


def test_the_dashboard_may_overlap_its_reference():
    shown = periods.Period(NOW - timedelta(days=30), NOW, "this period")
    assert periods.reference("2026-11-01..2026-11-30", shown, overlap=True) is not None


def films(n: int, p: float, fmt: str = "JPEG", side: int = 1500) -> list[tuple]:
    return [(p, p >= 0.5, fmt, side, side)] * n


def test_too_few_films_are_not_judged():
    reference = Sample.of_films("ref", films(100, 0.2) + films(50, 0.9), refused=3)
    recent = Sample.of_films("recent", films(10, 0.9), refused=0)
    drift = compare(reference, recent, min_films=30)
    assert [f.status for f in drift.figures] == [TOO_FEW] * 5 and not drift.judged and not drift.alarms
    text = as_table(drift, "the 7d window")
    assert "too few films to judge" in text and "ALARM" not in text
    # the same films, judged with a lower minimum: all positive, all JPEG
    drift = compare(reference, recent, min_films=10)
    assert {f.name: f.status for f in drift.figures} == {
        "positive_rate": ALARM,
        "p_distribution": ALARM,
        "refusal_rate": OK,
        "format_mix": OK,
        "size_mix": OK,
    }


def test_every_figure_is_in_the_table_and_the_json():
    reference = Sample.of_films("2026-10-01..2026-10-31", films(300, 0.1) + films(100, 0.9), refused=8)
    recent = Sample.of_films("recent", films(100, 0.1) + films(100, 0.9, "DICOM", 2500), refused=30)
    drift = compare(reference, recent)
    data = as_dict(drift, {"label": "the 7d window"})
    assert set(data["alarms"]) == {
        "positive_rate",
        "p_distribution",
        "refusal_rate",
        "format_mix",
        "size_mix",
    }
    text = as_table(drift, "the 7d window")
    assert text.splitlines()[-1].startswith("DRIFT: 5 of 5 figures beyond their limits")
    for line in ("Positive rate ", "P(PNEUMONIA) distribution ", "Gate refusal rate ", "Format mix "):
        row = next(r for r in text.splitlines() if r.startswith(line))
        assert row.rstrip().endswith("ALARM"), row
    positive = next(f for f in data["figures"] if f["figure"] == "positive_rate")
    assert positive["reference_rate"] == 0.25 and positive["recent_rate"] == 0.5
    assert positive["change"] == pytest.approx(0.25) and positive["p_value"] < 1e-6


def test_the_baseline_counts_what_the_worker_would_say():
    p = np.array([0.05, 0.2, 0.76, 0.77, 0.95])
    data = baseline(
        site="test",
        sample="site/",
        checked_on="2026-12-02",
        model_name="m",
        model_sha256="a" * 64,
        threshold=0.77,
        calibration="platt",
        p=p,
        images=[
            ("JPEG", 300, 200),
            ("JPEG", 1200, 1000),
            ("DICOM", 2500, 2048),
            ("PNG", 600, 900),
            ("JPEG", 1024, 10),
        ],
        refused=2,
        failed=1,
    )
    assert (data["films"], data["results"], data["positives"], data["refused"]) == (8, 5, 2, 2)
    assert data["refusal_rate"] == pytest.approx(2 / 7)
    assert data["formats"] == {"DICOM": 1, "JPEG": 3, "PNG": 1}
    assert data["sizes"] == {"< 512 px": 1, "512-1023 px": 1, "1024-2047 px": 2, ">= 2048 px": 1}
    assert (
        data["p_percentiles"][0] == 0.05
        and data["p_percentiles"][50] == 0.76
        and data["p_percentiles"][-1] == 0.95
    )
    sample = Sample.of_baseline(data)
    assert (sample.results, sample.positives, sample.gated, sample.refused) == (5, 2, 7, 2)
    assert sample.p_values is None and sample.p_histogram.sum() == 5


def test_size_classes():
    assert [size_class(w, h) for w, h in [(511, 100), (512, 100), (1023, 1023), (1024, 10), (100, 2048)]] == [
        SIZE_CLASSES[0],
        SIZE_CLASSES[1],
        SIZE_CLASSES[1],
        SIZE_CLASSES[2],
        SIZE_CLASSES[3],
    ]
