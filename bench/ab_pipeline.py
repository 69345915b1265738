"""A/B: `scan` and `watch` end to end, by two checkouts of this repository, alternating.

    git worktree add /tmp/oldtree <commit>
    python bench/ab_pipeline.py --old /tmp/oldtree [--rounds 5] [--copies 3] [--json out.json]
    git worktree remove /tmp/oldtree

Is a change faster or slower than the code before it, on this (noisy) machine? Both trees
run with this venv's packages and their own `worker` (PYTHONPATH), on the same corpus
(bench/throughput.py's: the 436 full-resolution originals `--copies` times, every copy
another content), in alternating order (old, new, then new, old, ...) so a drift of the
machine falls on both. Each run is a fresh process and a fresh SQLite database:

- scan: `xray-worker scan CORPUS`, images/s after start-up (start-up timed on an empty
  folder, as bench/throughput.py does);
- watch: the corpus hard-linked into a staging folder, renamed into the inbox at once,
  images/s from the end of the stability window to the last committed audit row.

Prints each run, then the median per tree and mode and the ratio new/old.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput

NEW = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def one_run(tree: Path, mode: str, corpus: Path, work: Path) -> float:
    """One run of ``mode`` by ``tree``: images/s."""
    os.environ["PYTHONPATH"] = str(tree)
    files = sorted(corpus.iterdir())
    work.mkdir(parents=True)
    if mode == "scan":
        row = throughput.scan_row(corpus, work)
        return len(files) / (row["total"] - row["startup"])
    staged = work / "staged"
    staged.mkdir()
    for f in files:
        os.link(f, staged / f.name)  # watch moves its inputs: links, so the corpus stays
    row = throughput.watch_row(sorted(staged.iterdir()), work)
    return len(files) / row["busy"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--old", type=Path, required=True, help="the other checkout (git worktree add)")
    parser.add_argument("--new", type=Path, default=NEW)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--modes", default="scan,watch")
    parser.add_argument("--corpus", type=Path, help="reuse a corpus bench/throughput.py made")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="xray-ab-"))
    corpus = args.corpus or root / "corpus"
    if not args.corpus:
        throughput.make_corpus(corpus, args.copies)
    n = sum(1 for _ in corpus.iterdir())
    print(f"corpus: {n} files; CPU: {cpu_name()}, {os.cpu_count()} cores", flush=True)
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    rates: dict[str, dict[str, list[float]]] = {m: {"old": [], "new": []} for m in args.modes.split(",")}
    for r in range(args.rounds):
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        for mode in rates:
            for name in order:
                rate = one_run(trees[name], mode, corpus, root / f"{mode}-{name}-{r}")
                rates[mode][name].append(rate)
                print(f"round {r + 1} {mode:5} {name}: {rate:7.1f} images/s", flush=True)
    print("\n| mode | old median | new median | new/old | runs each |\n|---|---|---|---|---|")
    summary = {}
    for mode, by_tree in rates.items():
        old, new = statistics.median(by_tree["old"]), statistics.median(by_tree["new"])
        summary[mode] = {"old": by_tree["old"], "new": by_tree["new"], "ratio": new / old}
        print(
            f"| {mode} | {old:.1f} images/s | {new:.1f} images/s | {new / old:.3f}x | {len(by_tree['new'])} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"files": n, "cpu": cpu_name(), "modes": summary}, indent=1))


if __name__ == "__main__":
    main()
