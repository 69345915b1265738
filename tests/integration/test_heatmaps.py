"""Heatmaps of the shipped model on real films: sanity checks that can fail (Adebayo et al.,
"Sanity Checks for Saliency Maps", 2018), the overlay, and ``predict --heatmaps``.

- **Model randomisation**: a map must depend on what the model learned. Maps of the shipped
  model and of a copy whose layer4 and head are re-initialised (the top of Adebayo's cascade)
  must be unlike (median Spearman correlation below 0.5); an edge detector, which ignores the
  weights, scores 1.0 on the same statistic (the control in the test).
- **Synthetic opacity**: a smooth bright blob pasted into one lung field of a real NORMAL film
  must pull the map's peak into that half of the image far more often than chance, on both
  sides. docs/heatmaps.md has the measured rates.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy.stats import spearmanr
from torch.nn import functional as F

from worker.cli.main import cli
from worker.config import DEFAULT_LEARNER
from worker.decode import DecodedImage
from worker.explain.gradcam import GradCam
from worker.explain.overlay import BAND_COLOUR, render
from worker.model.learner import LoadedModel, load_model
from worker.model.stages import prepare_file

FILMS = 30  # NORMAL films of site_sample for the opacity check, each with a blob on either side
# The blob: a Gaussian of sigma 7% of the film's width (full width at half maximum ~16%, a few
# centimetres on a child's film), 70 grey levels at its centre, in the middle of a lung field.
BLOB_SIGMA, BLOB_LEVELS = 0.07, 70.0
LUNGS = {"left": (0.30, 0.45), "right": (0.70, 0.45)}  # (x, y) as fractions of the image
SHARE_NEEDED = 0.75  # per side; 23 of 30 by chance (p = 0.5) has probability 0.003


@pytest.fixture(scope="module")
def shipped() -> LoadedModel:
    return load_model(DEFAULT_LEARNER, trust=True)


@pytest.fixture(scope="module")
def gradcam(shipped: LoadedModel) -> GradCam:
    return GradCam.of(shipped)


def films(data_dir: Path, label: str, n: int) -> list[Path]:
    return sorted((data_dir / "site_sample" / label).glob("*.jpeg"))[:n]


def with_blob(decoded: DecodedImage, side: str) -> DecodedImage:
    pixels = decoded.pixels.astype(np.float32)
    h, w = pixels.shape
    fx, fy = LUNGS[side]
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-((xx - fx * w) ** 2 + (yy - fy * h) ** 2) / (2 * (BLOB_SIGMA * w) ** 2))
    out = np.clip(pixels + BLOB_LEVELS * blob, 0, 255).astype(np.uint8)
    return DecodedImage(out, decoded.format, decoded.width, decoded.height, decoded.dicom)


def peak_side(heat: np.ndarray) -> str | None:
    """The half of the image holding the map's maximum; None for an empty map (no peak)."""
    if heat.max() <= 0:
        return None
    column = np.unravel_index(heat.argmax(), heat.shape)[1]
    return "left" if column < heat.shape[1] / 2 else "right"


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two maps' pixels; two empty maps are the same map (1.0), one empty map
    is unlike any other (0.0)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0 if np.ptp(a) == np.ptp(b) == 0 else 0.0
    return float(spearmanr(a.ravel(), b.ravel())[0])


def randomised(model: LoadedModel, modules: tuple[str, ...] = ("0.7", "1")) -> torch.nn.Module:
    """A copy of the model's network with the named modules re-initialised (seed 0)."""
    net = copy.deepcopy(model.learner.model)
    torch.manual_seed(0)
    for name in modules:
        for module in net.get_submodule(name).modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return net.eval()


def edges(items: list[torch.Tensor]) -> np.ndarray:
    """A 'saliency method' that ignores the model: the gradient magnitude of the image."""
    x = torch.stack(items).float()
    gx = F.conv2d(x, torch.tensor([[[[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]]]), padding=1)
    gy = F.conv2d(x, torch.tensor([[[[-1.0, -2, -1], [0, 0, 0], [1, 2, 1]]]]), padding=1)
    return torch.hypot(gx, gy)[:, 0].numpy()


def test_maps_change_when_the_models_weights_are_randomised(shipped, gradcam, data_dir: Path):
    """Over the films whose map shows something (an empty map shows nothing to compare)."""
    paths = films(data_dir, "NORMAL", 8) + films(data_dir, "PNEUMONIA", 8)
    items = [prepare_file(shipped, f)[0] for f in paths]
    trained = gradcam(items)
    shown = [i for i, peak in enumerate(trained.peaks) if peak > 0]
    assert len(shown) >= 6, f"only {len(shown)} of {len(items)} films have a map"
    for modules in [("0.7", "1"), ("0", "1")]:  # layer4 and the head; every weight
        net = randomised(shipped, modules)
        maps = GradCam(net, shipped.batch_pipeline, shipped.positive_index)(items).maps
        rho = np.median([rank_correlation(trained.maps[i], maps[i]) for i in shown])
        assert rho < 0.5, f"median rank correlation with {modules} re-initialised: {rho:.2f}"
    # The control: a method that ignores the weights gives the same map whatever they are.
    control = np.median([rank_correlation(a, b) for a, b in zip(edges(items), edges(items), strict=True)])
    assert control == pytest.approx(1.0)


def opacity_rates(shipped: LoadedModel, gradcam: GradCam, data_dir: Path) -> dict[str, tuple[float, float]]:
    """For each side: the share of films whose map peaks in the blob's half, and the share whose
    positive log-odds the blob raised."""
    decoded = [prepare_file(shipped, f)[1] for f in films(data_dir, "NORMAL", FILMS)]
    plain = gradcam([shipped.to_item(d) for d in decoded]).log_odds
    rates = {}
    for side in LUNGS:
        maps = gradcam([shipped.to_item(with_blob(d, side)) for d in decoded])
        hits = [peak_side(m) == side for m in maps.maps]
        rates[side] = (float(np.mean(hits)), float(np.mean(maps.log_odds > plain)))
    return rates


@pytest.fixture(scope="module")
def rates(shipped, gradcam, data_dir: Path) -> dict[str, tuple[float, float]]:
    return opacity_rates(shipped, gradcam, data_dir)


def test_the_synthetic_opacity_is_evidence_to_the_model(rates):
    """The blob is seen: it raises P(positive) on most films (else the next test means nothing)."""
    for side, (_, raised) in rates.items():
        assert raised >= 0.7, f"{side}: the blob raised the log-odds on only {raised:.0%} of films"


@pytest.mark.xfail(
    strict=True,
    reason="the shipped model's layer4 Grad-CAM does not localise a synthetic opacity: its peak is "
    "in the blob's half on 33% (left) and 30% (right) of 30 films, empty on 27% (docs/heatmaps.md)",
)
def test_the_map_peaks_in_the_lung_with_a_synthetic_opacity(rates):
    for side, (hit, _) in rates.items():
        assert hit >= SHARE_NEEDED, f"{side}: the map peaks in the blob's half on {hit:.0%} of {FILMS} films"


# -- the overlay on a real film, and predict --heatmaps ------------------------------


def test_the_overlay_of_a_real_film(shipped, gradcam, data_dir: Path):
    film = films(data_dir, "NORMAL", 1)[0]
    item, decoded = prepare_file(shipped, film)
    maps = gradcam([item])
    assert maps.peaks[0] > 0  # this film has a map to show
    a = render(decoded.pixels, maps.maps[0], max_side=256)
    b = render(decoded.pixels, GradCam.of(shipped)([item]).maps[0], max_side=256)
    assert np.array_equal(a, b)
    h, w = decoded.pixels.shape
    assert max(a.shape[:2]) <= 256 + 20 and abs(a.shape[1] / (a.shape[0] - 20) - w / h) < 0.02
    assert np.any(a[-20:] != np.array(BAND_COLOUR, np.uint8))
    grey = a[:-20]
    assert np.abs(grey[..., 0].astype(int) - grey[..., 2]).max() > 30  # colour where the map is


def test_predict_writes_a_heatmap_per_film_and_prints_its_path(data_dir: Path, tmp_path: Path):
    positive = films(data_dir, "PNEUMONIA", 1)[0]
    negative = films(data_dir, "NORMAL", 1)[0]
    runner = CliRunner()
    args = ["predict", "--json", "--heatmaps", str(tmp_path / "maps"), str(positive), str(negative)]
    result = runner.invoke(cli, args, env={"XRAY_SCREEN_CONFIG": ""})
    assert result.exit_code == 0, result.output
    records = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    pos, neg = records[positive.name], records[negative.name]
    assert pos["label"] == "PNEUMONIA" and neg["label"] == "NORMAL"
    assert "heatmap" not in neg  # positives only by default
    written = Path(pos["heatmap"])
    assert written.parent.parent == tmp_path / "maps" and written.is_file()
    assert written.stem == __import__("hashlib").sha256(positive.read_bytes()).hexdigest()
    image = Image.open(io.BytesIO(written.read_bytes()))
    assert image.format == "PNG" and image.mode == "RGB" and max(image.size) <= 1024 + 52

    result = runner.invoke(
        cli, ["predict", "--heatmaps", str(tmp_path / "all"), "--heatmaps-for", "all", str(negative)]
    )
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith(str(negative)) and "  NORMAL  " in line
    assert line.split("heatmap=")[1].endswith(".png") and Path(line.split("heatmap=")[1]).is_file()
