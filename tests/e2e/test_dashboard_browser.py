"""The dashboard in a real browser: a real ``xray-worker scan`` of sample films into a new
database, ``report --format html``, then Debian's chromium, headless, reads the page's DOM
and takes a screenshot. CI installs chromium (.ci/run): without it this test fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).with_name("xray-worker")
MODEL = ROOT / "models" / "pneumonia-resnet18" / "export.pkl"
MODEL_SHA256 = "dd1b89a27da09b7811fbf9245a598666471395dc9364d0ad1f89550a8e266b91"
CHARTED = ("volume", "positive-rate", "p-distribution", "refusals", "failures", "hourly", "workers")
WIDTH, HEIGHT = 1100, 5200


class Dom(HTMLParser):
    """The rendered DOM's title, charts per section (top-level <svg>) and 'no data' sections."""

    def __init__(self, text: str):
        super().__init__()
        self.title, self.charts, self.empty = "", {}, set()
        self._section: str | None = None
        self._svg = 0
        self._in_title = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "div" and a.get("class") == "plot":
            self._section = a["data-section"]
            self.charts[self._section] = 0
        elif tag == "svg":
            if self._svg == 0 and self._section:
                self.charts[self._section] += 1
            self._svg += 1
        elif tag == "p" and a.get("class") == "empty" and self._section:
            self.empty.add(self._section)
        self._in_title = tag == "title" and self._svg == 0

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg -= 1
        elif tag == "section":
            self._section = None
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(
            "chromium is missing: the dashboard must be checked in a real browser (apt install chromium)"
        )
    flags = ["--headless", "--disable-gpu", f"--user-data-dir={profile}", "--hide-scrollbars"]
    flags += ["--no-sandbox"] if os.geteuid() == 0 else []
    # The page may fetch nothing: send every host name nowhere.
    flags += ["--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=180, check=True)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict:
    """Sample films (the repository's, Kermany site films, RSNA DICOMs) and two broken files,
    screened by the real scan into a new SQLite database."""
    tmp = tmp_path_factory.mktemp("dashboard")
    films = tmp / "films"
    shutil.copytree(ROOT / "samples", films)
    for label in ("NORMAL", "PNEUMONIA"):
        for f in sorted((data_dir / "site_sample" / label).iterdir())[:12]:
            shutil.copy(f, films / f"{label}-{f.name}")
    for f in sorted((data_dir / "dicom").glob("00*.dcm"))[:4]:
        shutil.copy(f, films / f.name)
    jpeg = next((ROOT / "samples").glob("*.jpeg")).read_bytes()
    (films / "truncated.jpeg").write_bytes(jpeg[: len(jpeg) // 3])
    (films / "notes.txt.jpeg").write_text("not an X-ray\n")
    config = tmp / "config.toml"
    database = f"sqlite:///{tmp / 'r.db'}"
    config.write_text(
        f'[model]\npath = "{MODEL}"\nsha256 = "{MODEL_SHA256}"\n[database]\nurl = "{database}"\n'
    )
    scan = subprocess.run(
        [EXE, "--config", config, "scan", films], capture_output=True, text=True, timeout=600, check=False
    )
    assert scan.returncode == 0, scan.stdout + scan.stderr
    assert "2 failed" in scan.stderr + scan.stdout, scan.stderr
    page = tmp / "dashboard.html"
    report = subprocess.run(
        [EXE, "--config", config, "report", "--since", "all", "--format", "html", "--out", page],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    return {"page": page, "tmp": tmp, "scan": scan.stdout}


def test_the_browser_sees_every_chart(scanned: dict):
    dom = chromium("--dump-dom", scanned["page"].as_uri(), profile=scanned["tmp"] / "profile-dom").stdout
    page = Dom(dom)
    assert page.title.startswith("xray-screen dashboard: ") and "(UTC)" in page.title
    assert page.charts == {**dict.fromkeys(CHARTED, 1), "deliveries": 0}, page.empty
    assert page.empty == {"deliveries"}  # no [pacs] destinations: said in words
    assert "site profile kermany-test" in dom and "pneumonia-resnet18" in dom
    assert "truncated JPEG" in dom and "not an image" in dom


def test_the_screenshot_shows_the_page(scanned: dict):
    shot = scanned["tmp"] / "dashboard.png"
    chromium(
        f"--screenshot={shot}",
        f"--window-size={WIDTH},{HEIGHT}",
        scanned["page"].as_uri(),
        profile=scanned["tmp"] / "profile-shot",
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, charts, colours: not one colour
    ink = (pixels < 200).any(axis=2)  # not white nor the faint greys of rules and grids
    assert ink.mean() > 0.02, ink.mean()
    rows = np.flatnonzero(ink.any(axis=1))
    assert rows[-1] > 3000, rows[-1]  # the sections run down the page, not just a header
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 80)  # the charts' screened bars and points
    orange = (pixels[..., 0] > 230) & (pixels[..., 1] > 100) & (pixels[..., 1] < 150) & (pixels[..., 2] < 50)
    red = (pixels[..., 0] > 190) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)  # failed, limits
    assert blue.sum() > 5000 and orange.sum() > 2000 and red.sum() > 500, (
        blue.sum(),
        orange.sum(),
        red.sum(),
    )
