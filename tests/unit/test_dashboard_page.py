"""The dashboard page from made-up counts (no database): its tiles say films or files, so
that they agree with the volume chart and ``xray-worker report``, which count files."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from worker.db.activity import Activity
from worker.db.dashboard import Reference, page
from worker.drift.sample import Sample

DAY = date(2026, 12, 2)
NOW = datetime(2026, 12, 2, 13, 0, tzinfo=UTC)


def the_tour() -> tuple[Activity, Sample]:
    """The README's tour: a scan of the six samples, then the same six dropped into the inbox:
    4 films with a verdict (8 files), 2 films refused by the gate (4 files)."""
    activity = Activity(
        files_by_day={DAY: {"screened": 4, "duplicate": 4, "out_of_scope": 4}},
        verdicts_by_day={DAY: (4, 2)},
        refused_by_day={DAY: 2},
        files_by_hour={datetime(2026, 12, 2, 12): 12},
        workers={
            "vm / scan": {"screened": 4, "out_of_scope": 2},
            "vm / vm": {"duplicate": 4, "out_of_scope": 2},
        },
    )
    films = [(0.91, True, "JPEG", 1000, 800), (0.82, True, "JPEG", 1000, 800)]
    films += [(0.01, False, "JPEG", 1000, 800)] * 2
    return activity, Sample.of_films("this period", films, refused=2)


def tiles(text: str) -> dict[str, str]:
    """Each tile's caption and its number."""
    return {t: v for v, t in re.findall(r'<div class="tile"><b>([^<]*)</b><span>([^<]*)</span></div>', text)}


def test_each_tile_says_whether_it_counts_films_or_files():
    activity, recent = the_tour()
    text = page(
        activity,
        recent,
        Reference("none", None, why="no baseline"),
        since=None,
        until=NOW,
        database="sqlite:///x.db",
        generated=NOW,
    )
    assert tiles(text) == {
        "files handled": "12",
        "films with a verdict, in 8 files": "4",
        "positive (2 films)": "50.0%",
        "refused by the gate: 2 films, in 4 files": "33.3%",
        "files failed": "0",
    }
    assert "A film is one image, however many files carry it" in text
    assert "Labels: films refused/films judged" in text
