#!/bin/bash
# LANTON (the paper's setup, and on top of Muon) against its base, torch.optim.Muon and
# torch.optim.AdamW on shakespeare-char: every optimizer on the lr grid {0.5, 1, 2, 4} x its bench
# default, two seeds, 300 steps of batch 32 (40 cells of ~50 s on 2 cores). The suite resumes:
# rerunning the command skips finished cells. The report (best lr, mean ± std, steps to AdamW's
# loss, lr sensitivity, layerwise lr factors) is written into the run directory.
# Usage: benchmarks/lanton_grid.sh [OUT_DIR]   (default ./bench-out/lanton-grid)
exec "${PYTHON:-.venv/bin/python}" -m steepest bench --task shakespeare-char \
  --optimizers steepest-lanton,steepest-lanton-base,steepest-muon-lanton,torch-muon,adamw \
  --lr-grid 0.5,1,2,4 --seeds 0,1 --steps 300 --batch-size 32 --eval-every 25 \
  --out "${1:-bench-out/lanton-grid}"
