#!/bin/bash
# A/B: the same scan of the same corpus by two commits of this repository, alternating, three
# rounds: is a change faster or slower than the code before it, on this (noisy) machine?
#   git worktree add /tmp/oldtree <commit>; bench/ab_scan.sh; git worktree remove /tmp/oldtree
# The corpus: bench/throughput.py's (1308 files), made with
#   python -c "import sys; sys.path.insert(0, 'bench'); import throughput as t; from pathlib import Path; \
#              t.make_corpus(Path('/tmp/xray-throughput-ab/corpus'), 3)"
set -u
PY=/work/main/.venv/bin/python
CORPUS=$(ls -d /tmp/xray-throughput-*/corpus | head -1)
for round in 1 2 3; do
  for tree in old new; do
    if [ $tree = old ]; then root=/tmp/oldtree; else root=/work/main; fi
    rm -f /tmp/ab-$tree.db
    cd $root
    s=$(date +%s.%N)
    PYTHONPATH=$root $PY -c "import sys; sys.argv=['xray-worker','scan','$CORPUS','--db','sqlite:////tmp/ab-$tree.db']; from worker.cli import main; main()" >/dev/null 2>/tmp/ab-$tree.err || { cd $root; PYTHONPATH=$root $PY -m worker.cli db upgrade --db sqlite:////tmp/ab-$tree.db >/dev/null 2>&1; s=$(date +%s.%N); PYTHONPATH=$root $PY -c "import sys; sys.argv=['xray-worker','scan','$CORPUS','--db','sqlite:////tmp/ab-$tree.db']; from worker.cli import main; main()" >/dev/null 2>/tmp/ab-$tree.err; }
    e=$(date +%s.%N)
    echo "$round $tree $(echo "$e - $s" | bc) $(grep -o '[0-9.]* images/s' /tmp/ab-$tree.err | head -1)"
  done
done
