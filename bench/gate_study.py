"""Which score should the gate use to refuse films the model cannot judge? (issue 13)

    python bench/gate_study.py [--model models/pneumonia-resnet18/export.pkl] [--json out.json] [--cost]

Runs the model's own preprocessing and forward pass over:

- its training films, split as it was trained (patient split, seed 42): the training part
  fits the Mahalanobis gate (class means, shared covariance of the penultimate features),
  the validation part sets each score's limit at its 99th percentile (1% refused);
- ``site_sample`` (the Kermany test population: in distribution, should pass);
- ``nih_site_sample`` (adult films from another hospital: the model cannot judge them);
- the 19 chest DICOMs of ``dicom/`` (adult RSNA CR, WG04: chest films, other sources);
- non-chest images: pydicom's bundled test files (CT, MR, RT dose, secondary captures),
  photos and drawings (scikit-learn's and matplotlib's sample images, their crops, and
  drawings made here) and a matplotlib sample MR slice.

For each score (Mahalanobis at one or two layers, energy of the logits, the maximum class
probability) it prints the share of each group above the limit. ``--cost`` measures the
stored gate's cost per image against the forward pass instead.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("XRAY_SCREEN_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")


def non_chest_images(folder: Path) -> list[Path]:
    """Photos, drawings and a non-chest MR slice, written as PNG/JPEG into ``folder``."""
    import matplotlib
    from PIL import Image, ImageDraw
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    photos += [Image.open(sample / "grace_hopper.jpg").convert("RGB")]
    photos += [Image.open(sample / "Minduka_Present_Blue_Pack.png").convert("RGB")]
    out = []
    rng = np.random.default_rng(0)
    for i, photo in enumerate(photos):
        w, h = photo.size
        for j in range(6):  # the whole picture, then random crops, colour and grey
            if j:
                cw, ch = int(w * rng.uniform(0.4, 0.8)), int(h * rng.uniform(0.4, 0.8))
                x, y = int(rng.uniform(0, w - cw)), int(rng.uniform(0, h - ch))
                img = photo.crop((x, y, x + cw, y + ch))
            else:
                img = photo
            img = img.convert("L") if j % 2 else img
            path = folder / f"photo-{i}-{j}.jpeg"
            img.save(path, quality=90)
            out.append(path)
    for i in range(12):  # drawings: shapes and text on a plain ground
        img = Image.new("L", (512, 512), int(rng.integers(0, 255)))
        draw = ImageDraw.Draw(img)
        for _ in range(8):
            x0, y0 = rng.integers(0, 400, 2)
            x1, y1 = x0 + rng.integers(20, 200), y0 + rng.integers(20, 200)
            shape = [draw.rectangle, draw.ellipse, draw.line][int(rng.integers(0, 3))]
            shape((int(x0), int(y0), int(x1), int(y1)), fill=int(rng.integers(0, 255)))
        draw.text((20, 20), f"drawing {i}", fill=255 - img.getpixel((0, 0)))
        path = folder / f"drawing-{i}.png"
        img.save(path)
        out.append(path)
    with gzip.open(sample / "s1045.ima.gz") as fh:
        raw = np.frombuffer(fh.read(), np.uint16).reshape(256, 256)
    mr = folder / "mr-slice.png"
    Image.fromarray((raw / raw.max() * 255).astype(np.uint8)).save(mr)
    out.append(mr)
    return out


def pydicom_non_chest() -> list[Path]:
    """pydicom's bundled test files (read from its package folder: ``get_testdata_files``
    would try to download more, and nothing here may reach the network)."""
    import pydicom

    bundled = Path(pydicom.__file__).parent / "data" / "test_files"
    keep = ("CT_", "MR_", "rtdose", "SC_", "US", "NM", "PT", "OT")
    return sorted(p for p in bundled.glob("*.dcm") if p.name.startswith(keep))


# The candidates: Mahalanobis scores at one or more layers (module paths of the fastai model:
# "1.1" is the head's flattened pooling, 1024 values; "0.6" resnet's layer3 as channel means
# and standard deviations), and two scores from the logits alone.
CANDIDATES = {
    "Mahalanobis, penultimate": ("penultimate",),
    "Mahalanobis, pooled 1024": ("1.1",),
    "Mahalanobis, layer3": ("0.6",),
    "Mahalanobis, penultimate + layer3": ("penultimate", "0.6"),
    "Mahalanobis, layer1 3x3 grid": ("0.4:grid3",),
    "Mahalanobis, layer2 3x3 grid": ("0.5:grid3",),
    "Mahalanobis, layer1 + layer2 3x3 grids": ("0.4:grid3", "0.5:grid3"),
    "Mahalanobis, penultimate + layer1 3x3 grid": ("penultimate", "0.4:grid3"),
}
LAYERS = ("penultimate", "1.1", "0.6", "0.4:grid3", "0.5:grid3")


def cost(model_path: Path, rounds: int = 15) -> None:
    """The stored gate's cost alone: its score of a batch of 64 against that batch's forward
    pass, alternating, median of ``rounds``."""
    from training.split import PatientSplitter
    from worker.config import InferenceSettings
    from worker.model.gate import ImageGate
    from worker.model.learner import load_model
    from worker.model.predictor import Predictor
    from worker.model.stages import prepare_file

    model = load_model(model_path, trust=True)
    gate = ImageGate.of(model)
    if gate is None:
        raise SystemExit(f"{model_path} has no image gate (xray-train gate)")
    files = sorted((DATA / "chest_xray_224" / "train").rglob("*.jpeg"))
    _, valid_idx = PatientSplitter(0.2, 42)(files)
    items = [prepare_file(model, files[i])[0] for i in valid_idx[:64]]
    plain = Predictor(model, InferenceSettings(batch_size=64, device="cpu"))
    gated = Predictor(model, InferenceSettings(batch_size=64, device="cpu"), feature_layers=gate.layer_names)
    forward, with_taps, score = [], [], []
    for _ in range(rounds):
        t = time.perf_counter()
        plain.infer(items)
        forward.append(time.perf_counter() - t)
        t = time.perf_counter()
        _, f, _ = gated.infer_features(items)
        with_taps.append(time.perf_counter() - t)
        t = time.perf_counter()
        gate.scores(f)
        score.append(time.perf_counter() - t)
    fw, taps, sc = (float(np.median(x)) for x in (forward, with_taps, score))
    print(
        f"forward pass {fw * 1000 / 64:.2f} ms/image; with the gate's feature taps "
        f"{taps * 1000 / 64:.2f} ms/image ({(taps - fw) / fw:+.1%}); the score "
        f"{sc * 1000 / 64:.3f} ms/image ({sc / fw:.1%} of the forward pass); "
        f"median of {rounds} batches of 64"
    )


def run(model_path: Path, out_json: Path | None, refuse_share: float = 0.01) -> None:
    from training.gate import layer_features
    from training.split import PatientSplitter
    from worker.model.gate import energy, fit_gate
    from worker.model.learner import load_model

    model = load_model(model_path, trust=True)
    train_root = DATA / "chest_xray_224" / "train"
    files = sorted(train_root.rglob("*.jpeg"))
    labels = np.array([model.vocab.index(f.parent.name) for f in files])
    train_idx, valid_idx = PatientSplitter(0.2, 42)(files)  # as the shipped model was fit
    t = time.perf_counter()
    f_train, _, _ = layer_features(model, [files[i] for i in train_idx], LAYERS)
    f_valid, _, lg_valid = layer_features(model, [files[i] for i in valid_idx], LAYERS)
    print(f"features of {len(files)} training films in {time.perf_counter() - t:.0f} s", flush=True)
    gates = {
        name: fit_gate(
            {k: f_train[k] for k in layers},
            labels[train_idx],
            {k: f_valid[k] for k in layers},
            refuse_share=refuse_share,
        )
        for name, layers in CANDIDATES.items()
    }
    logit_scores = {
        "energy": energy,
        "1 - max probability": lambda lg: (
            1 - np.exp(lg - lg.max(1, keepdims=True)).max(1) / np.exp(lg - lg.max(1, keepdims=True)).sum(1)
        ),
    }
    limits = {name: gate.limit for name, gate in gates.items()}
    limits.update(
        {name: float(np.quantile(fn(lg_valid), 1 - refuse_share)) for name, fn in logit_scores.items()}
    )

    with tempfile.TemporaryDirectory() as tmp:
        groups = {
            "validation split (in distribution)": [files[i] for i in valid_idx],
            "site_sample (Kermany test, in distribution)": sorted((DATA / "site_sample").rglob("*.jpeg")),
            "nih_site_sample (adults, another hospital)": sorted((DATA / "nih_site_sample").rglob("*.png")),
            "dicom/ (adult chest CR, other sources)": sorted((DATA / "dicom").glob("*.dcm")),
            "pydicom test files (CT, MR, RT, SC)": pydicom_non_chest(),
            "photos, drawings, an MR slice": non_chest_images(Path(tmp) / "nonchest"),
        }
        table = {}
        print(f"\nlimits ({1 - refuse_share:.1%} quantile of the validation split): {limits}\n")
        print("| films | n | decoder refused | " + " | ".join(limits) + " |")
        print("|---|---|---|" + "---|" * len(limits))
        for name, paths in groups.items():
            feats, kept, logits = layer_features(model, paths, LAYERS)
            scores = {k: g.scores(feats) if kept else np.empty(0) for k, g in gates.items()}
            scores.update({k: fn(logits) if kept else np.empty(0) for k, fn in logit_scores.items()})
            shares = {k: float(np.mean(v > limits[k])) if len(v) else 0.0 for k, v in scores.items()}
            table[name] = {"n": len(paths), "decoder_refused": len(paths) - len(kept), "refused": shares}
            cells = " | ".join(f"{shares[k]:.3f}" for k in limits)
            print(f"| {name} | {len(paths)} | {len(paths) - len(kept)} | {cells} |", flush=True)

    print("\nthe cost of a stored gate: python bench/gate_study.py --cost")
    if out_json:
        out_json.write_text(json.dumps({"limits": limits, "groups": table}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "pneumonia-resnet18" / "export.pkl")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cost", action="store_true", help="Only measure the stored gate's cost.")
    parser.add_argument("--refuse-share", type=float, default=0.01, help="Share of validation films refused.")
    args = parser.parse_args()
    if args.cost:
        cost(args.model)
    else:
        run(args.model, args.json, args.refuse_share)


if __name__ == "__main__":
    main()
