"""How often does an operating point's sensitivity hold on new patients? The two rules of
training/operating.py on simulated samples of site_sample's size (175 positives, 117 negatives),
with binormal scores whose true sensitivity and specificity at any threshold are known.

    python bench/operating_points.py [--runs 2000] [--auc 0.954] [--target 0.95]

Prints, per rule: the share of samples whose chosen threshold truly reaches the target
sensitivity, the median true sensitivity and specificity, and how often the point is refused.
"""

from __future__ import annotations

import argparse
import math
from statistics import NormalDist

import numpy as np

from training.operating import choose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--auc", type=float, default=0.954, help="the scores' true ROC AUC")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--positives", type=int, default=175)
    parser.add_argument("--negatives", type=int, default=117)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    normal = NormalDist()
    shift = math.sqrt(2) * normal.inv_cdf(args.auc)  # binormal, equal variances: AUC = Phi(d / sqrt 2)
    rng = np.random.default_rng(args.seed)
    y = np.r_[np.ones(args.positives), np.zeros(args.negatives)].astype(bool)
    rows = {rule: {"held": 0, "sens": [], "spec": [], "refused": 0} for rule in ("point", "wilson")}
    for _ in range(args.runs):
        z = np.where(y, rng.normal(shift, 1, len(y)), rng.normal(0, 1, len(y)))
        for rule, row in rows.items():
            point = choose(y, z, args.target, rule, estimate_needs=False)
            sens = 1 - normal.cdf(point.threshold - shift)
            row["held"] += sens >= args.target
            row["sens"].append(sens)
            row["spec"].append(normal.cdf(point.threshold))
            row["refused"] += not point.deployable
    print(
        f"{args.runs} samples of {args.positives} positives and {args.negatives} negatives, binormal scores "
        f"with AUC {args.auc}, target sensitivity {args.target}"
    )
    print(
        "| rule | true sensitivity >= target | median true sensitivity | median true specificity | refused |"
    )
    print("|---|---|---|---|---|")
    for rule, row in rows.items():
        print(
            f"| {rule} | {row['held'] / args.runs:.1%} | {np.median(row['sens']):.3f} | "
            f"{np.median(row['spec']):.3f} | {row['refused'] / args.runs:.1%} |"
        )


if __name__ == "__main__":
    main()
