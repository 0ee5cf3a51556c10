#!/bin/bash
# LANTON (the paper's setup, and on top of Muon) against its base, torch.optim.Muon and
# torch.optim.AdamW on shakespeare-char: each optimizer on the lr grid {0.5, 1, 2} x its bench
# default, extended by one doubling where the best lr was the largest (LANTON, Muon+LANTON,
# torch.optim.Muon), two seeds, the quick configuration (300 steps, batch 32): 36 runs of ~50 s on
# 2 cores.
# Then: python benchmarks/summarize_grid.py OUT_DIR
# Usage: benchmarks/lanton_grid.sh [OUT_DIR]   (default ./bench-out/lanton-grid; finished runs are kept)
set -e
out_root=${1:-bench-out/lanton-grid}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out_root"
for seed in 1234 1235; do
  for spec in "steepest-lanton 0.02 0.04 0.08 0.16" "steepest-lanton-base 0.01 0.02 0.04" \
              "steepest-muon-lanton 0.02 0.04 0.08 0.16" "torch-muon 0.01 0.02 0.04 0.08" "adamw 2e-3 4e-3 8e-3"; do
    set -- $spec; name=$1; shift
    for lr in "$@"; do
      out="$out_root/$name-$lr-$seed"
      [ -f "$out/results.json" ] && continue
      "$python" -m steepest bench --optimizers "$name" --lr "$name=$lr" --seed "$seed" --in-process \
        --no-progress --out "$out" > "$out.log" 2>&1
      echo "$name lr=$lr seed=$seed: $(grep -o 'total wall time.*' "$out.log")"
    done
  done
done
