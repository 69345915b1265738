"""Heatmaps on made-up inputs: Grad-CAM on a tiny network whose evidence is known, the overlay's
pixels, the heatmap's path, and the stage's ordering (worker/explain)."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker.explain.heatmaps import annotate
from worker.explain.overlay import BAND_COLOUR, CAPTION, colour_table, onto_film, render, write_png
from worker.explain.settings import ExplainSettings, heatmap_path

SHA = "ab" * 32


# -- the overlay ---------------------------------------------------------------------


def film(height: int = 600, width: int = 400) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(40, 200, size=(height, width), dtype=np.uint8)


def hot_corner(size: int = 128) -> np.ndarray:
    heat = np.zeros((size, size), np.float32)
    heat[: size // 4, : size // 4] = 1.0
    return heat


def test_the_overlay_is_the_film_at_most_max_side_with_a_band_below():
    out = render(film(2000, 1500), hot_corner(), max_side=1024)
    assert out.dtype == np.uint8 and out.shape[2] == 3
    assert out.shape[1] == 768  # 1500 * 1024 / 2000
    band = out.shape[0] - 1024
    assert band == round(1024 * 0.05)
    small = render(film(300, 200), hot_corner(), max_side=1024)
    assert small.shape[:2] == (300 + 20, 200)  # never enlarged; the band at least 20 px


def test_the_caption_is_written_on_the_band():
    out = render(film(), hot_corner())
    band = out[600:]
    text = np.any(band != np.array(BAND_COLOUR, np.uint8), axis=2)
    assert text.sum() > 200  # white letters across the band
    assert text[:, : out.shape[1] // 2].any()
    bare = render(film(), hot_corner(), text="")
    assert not np.any(bare[600:] != np.array(BAND_COLOUR, np.uint8))
    assert CAPTION == "AI heatmap - not for diagnosis"


def test_the_map_shows_where_it_is_hot_and_leaves_the_film_where_it_is_zero():
    grey = film()
    out = render(grey, hot_corner())[:600]
    hot = np.abs(out[:100, :60].astype(int) - grey[:100, :60, None]).mean()
    assert hot > 20
    cold = out[400:, 200:]
    assert np.array_equal(cold, np.repeat(grey[400:, 200:, None], 3, axis=2))
    assert np.array_equal(colour_table()[255], colour_table("inferno")[255])
    assert colour_table()[255].mean() > colour_table()[0].mean() + 150  # bright where hot


def test_the_overlay_and_its_png_are_deterministic(tmp_path: Path):
    a = render(film(), hot_corner())
    assert np.array_equal(a, render(film(), hot_corner()))
    one = write_png(a, tmp_path / "x" / "one.png").read_bytes()
    two = write_png(a, tmp_path / "two.png").read_bytes()
    assert one == two
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(one))), a)
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["one.png"]  # no partial file left


def test_the_map_is_laid_back_as_resize_took_the_film_in():
    heat = np.zeros((4, 4), np.float32)
    heat[:, 0] = 1.0  # the item's left column
    squish = onto_film(heat, (40, 80), "squish")
    assert squish.shape == (40, 80) and squish[:, :10].mean() > 0.8 and squish[:, 40:].max() < 0.01
    crop = onto_film(heat, (40, 80), "crop")  # the centre 40 x 40 was seen; the rest was not
    assert crop[:, :20].max() == 0 and crop[:, 20:25].mean() > 0.8 and crop[:, 60:].max() == 0
    padded = np.zeros((4, 4), np.float32)
    padded[1:3, :] = 1.0  # a wide film sits in the middle rows of a padded square item
    assert onto_film(padded, (20, 40), "pad").min() > 0.9


# -- settings, paths, the stage ------------------------------------------------------


def test_the_heatmap_path_is_root_date_and_content_hash():
    path = heatmap_path(Path("/var/heatmaps"), SHA, date(2025, 1, 31))
    assert path == Path("/var/heatmaps/2025-01-31") / f"{SHA}.png"
    with pytest.raises(ValueError, match="SHA-256"):
        heatmap_path(Path("/x"), "../../etc/passwd", date(2025, 1, 31))


def test_which_films_get_a_heatmap():
    assert ExplainSettings().heatmaps == "none" and ExplainSettings().max_side == 1024  # docs/heatmaps.md
    assert ExplainSettings().folder.parts[-2:] == ("var", "heatmaps")
    assert not ExplainSettings().wants("PNEUMONIA", "PNEUMONIA")
    assert ExplainSettings(heatmaps="positives").wants("PNEUMONIA", "PNEUMONIA")
    assert not ExplainSettings(heatmaps="positives").wants("NORMAL", "PNEUMONIA")
    assert ExplainSettings(heatmaps="all").wants("NORMAL", "PNEUMONIA")
    assert not ExplainSettings(heatmaps="none").wants("PNEUMONIA", "PNEUMONIA")


def test_answers_keep_their_order_and_only_wait_behind_a_pending_map():
    calls: list[list[str]] = []
    seen: list[str] = []

    def write(batch: list[str]) -> list[Path]:
        calls.append(list(batch))
        return [Path(f"{a}.png") for a in batch]

    def answers():
        for a in ["n1", "n2", "P3", "n4", "P5", "P6", "n7", "n8"]:
            seen.append(a)
            yield a

    out = []
    for answer, path in annotate(answers(), lambda a: a.startswith("P"), write, window=3):
        out.append((answer, path))
        if answer == "n1":
            assert seen == ["n1"]  # handed on at once: nothing before it wants a map
    assert [a for a, _ in out] == ["n1", "n2", "P3", "n4", "P5", "P6", "n7", "n8"]
    assert dict(out)["P3"] == Path("P3.png") and dict(out)["n4"] is None
    assert calls == [["P3", "P5"], ["P6"]]  # at most 3 answers held; maps in batches
