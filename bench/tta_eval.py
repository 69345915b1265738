"""TTA / ensemble check on a labelled folder, through the worker's own preprocessing.

python bench/tta_eval.py MODEL.pkl DATA_DIR OUT.npz   -> per-view P(positive), AUCs
python bench/tta_eval.py --ensemble A.npz B.npz ...    -> AUC of averaged probabilities
"""

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.data import labelled_files
from training.metrics import summarize, threshold_for_sensitivity
from worker.model.learner import load_model
from worker.model.stages import prepare_file


def report(name, y, p):
    t = threshold_for_sensitivity(y, p, 0.95)
    s = summarize(y, p, t)
    print(
        f"{name:34s} AUC {s['roc_auc']:.4f}  at sens>=0.95: thr {t:.4f} "
        f"sens {s['sensitivity']:.3f} spec {s['specificity']:.3f}"
    )
    return {
        "roc_auc": s["roc_auc"],
        "threshold": t,
        "sensitivity": s["sensitivity"],
        "specificity": s["specificity"],
    }


def views(x):
    """Deterministic views of a normalised batch (B,1,H,W): identity, centre zoom, small rotations, shifts."""

    def affine(theta):
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), x.shape, align_corners=True)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)

    def rot(deg, scale=1.0):
        a = math.radians(deg)
        return torch.tensor(
            [
                [math.cos(a) / scale, -math.sin(a) / scale, 0.0],
                [math.sin(a) / scale, math.cos(a) / scale, 0.0],
            ]
        )

    def shift(dx, dy):
        return torch.tensor([[1.0, 0.0, dx], [0.0, 1.0, dy]])

    return {
        "identity": x,
        "zoom1.1": affine(rot(0, 1.1)),
        "rot+7": affine(rot(7)),
        "rot-7": affine(rot(-7)),
        "shift": affine(shift(0.05, 0.05)),
        "shift-": affine(shift(-0.05, -0.05)),
    }


def main_model(model_path, data_dir, out):
    torch.set_num_threads(1)
    model = load_model(Path(model_path), trust=True)
    files = labelled_files(Path(data_dir))
    y = np.array([1 if lab == model.positive_class else 0 for _, lab in files])
    t0 = time.perf_counter()
    items = [prepare_file(model, p)[0] for p, _ in files]
    t_decode = time.perf_counter() - t0
    net = model.learner.model.eval()
    probs, cost = {}, {}
    with torch.no_grad():
        for i in range(0, len(items), 64):
            xb = model.batch_pipeline(torch.stack(items[i : i + 64]))
            for name, v in views(xb).items():
                t = time.perf_counter()
                p = F.softmax(net(v), dim=1)[:, model.positive_index].numpy()
                cost[name] = cost.get(name, 0) + time.perf_counter() - t
                probs.setdefault(name, []).append(p)
    probs = {k: np.concatenate(v) for k, v in probs.items()}
    res = {"decode_s": t_decode, "forward_s": cost}
    for k, v in probs.items():
        res[k] = report(k, y, v)
    combos = {
        "tta3 (id, rot+-7)": ["identity", "rot+7", "rot-7"],
        "tta4 (id, zoom, rot+-7)": ["identity", "zoom1.1", "rot+7", "rot-7"],
        "tta6 (all)": list(probs),
    }
    for name, keys in combos.items():
        res[name] = report(name, y, np.mean([probs[k] for k in keys], 0))
    # fastai's own TTA: 4 passes with the training augmentations, mixed with the plain pass (beta 0.25)
    t = time.perf_counter()
    dl = model.learner.dls.test_dl([p for p, _ in files], num_workers=0)
    with model.learner.no_bar():
        tta, _ = model.learner.tta(dl=dl, n=4)
    res["fastai_tta_s"] = time.perf_counter() - t
    res["fastai tta n=4"] = report("fastai tta n=4 (training augs)", y, tta[:, model.positive_index].numpy())
    np.savez(
        out,
        y=y,
        files=np.array([str(p) for p, _ in files]),
        **{k.replace("+", "p").replace("-", "m"): v for k, v in probs.items()},
    )
    Path(out).with_suffix(".json").write_text(json.dumps(res, indent=2, default=float))
    print(
        json.dumps(
            {"decode_s": t_decode, "forward_s": cost, "fastai_tta_s": res["fastai_tta_s"]}, default=float
        )
    )


def main_ensemble(paths):
    runs = [np.load(p) for p in paths]
    y = runs[0]["y"]
    assert all((r["files"] == runs[0]["files"]).all() for r in runs)
    for r, p in zip(runs, paths, strict=True):
        report(Path(p).stem, y, r["identity"])
    report(f"ensemble of {len(runs)} (identity)", y, np.mean([r["identity"] for r in runs], 0))

    def tta(r):
        return np.mean([r["identity"], r["rotp7"], r["rotm7"]], 0)

    report(f"ensemble of {len(runs)} x tta3", y, np.mean([tta(r) for r in runs], 0))


def main_compare(a_path, b_path, key_a="identity", key_b="identity", resamples=2000):
    """Paired bootstrap over patients of AUC(B) - AUC(A) on the same films."""
    from training.metrics import roc_auc
    from training.split import patient_id

    a, b = np.load(a_path), np.load(b_path)
    assert (a["files"] == b["files"]).all()
    y = a["y"]
    pa = np.mean([a[k] for k in key_a.split(",")], 0)
    pb = np.mean([b[k] for k in key_b.split(",")], 0)
    groups = {}
    for i, f in enumerate(a["files"]):
        groups.setdefault(patient_id(f), []).append(i)
    groups = [np.array(v) for v in groups.values()]
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(resamples):
        idx = np.concatenate([groups[j] for j in rng.integers(0, len(groups), len(groups))])
        if 0 < y[idx].sum() < len(idx):
            diffs.append(roc_auc(y[idx], pb[idx]) - roc_auc(y[idx], pa[idx]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    d = roc_auc(y, pb) - roc_auc(y, pa)
    print(
        f"AUC {Path(b_path).stem}[{key_b}] - {Path(a_path).stem}[{key_a}] = {d:+.4f}  "
        f"95% CI [{lo:+.4f}, {hi:+.4f}]  ({len(groups)} patients)"
    )


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    if sys.argv[1] == "--compare":
        main_compare(*sys.argv[2:])
    elif sys.argv[1] == "--ensemble":
        main_ensemble(sys.argv[2:])
    else:
        main_model(*sys.argv[1:4])
