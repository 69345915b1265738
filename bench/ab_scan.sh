#!/bin/bash
# A/B of `scan` and `watch` by two commits of this repository, alternating rounds on one
# corpus: is a change faster or slower than the code before it, on this (noisy) machine?
#   git worktree add /tmp/oldtree <commit>; bench/ab_scan.sh [--rounds 5]; git worktree remove /tmp/oldtree
# (bench/ab_pipeline.py does the work; its docstring says how each run is timed.)
set -eu
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/ab_pipeline.py --old "${OLD_TREE:-/tmp/oldtree}" "$@"
