#!/usr/bin/env bash
# The ablation table of issue 7 at a reduced budget (128 px, 10 epochs: ~6 min a run on 2 CPU cores):
# the seed preset, the seed preset with one lever changed, and the screen preset, all on the seed
# baseline's patient split, all choosing the best epoch by validation macro-AUC (so that the rows
# compare the levers, not the selection rule). Rows for RESULTS.md:
#   python benchmarks/results_table.py runs/ablation/*
set -euo pipefail
budget=(--image-size 128 --epochs 10 --select-metric macro_auc)
export RUNS=${RUNS:-runs/ablation}
run() { bash benchmarks/recipe.sh "$@" "${budget[@]}"; }
run seed seed
run seed+augment seed --augment fundus
run seed+adamw seed --optimizer adamw --lr 0.002 --weight-decay 0.05 --warmup-epochs 1 --label-smoothing 0.1
run seed+logit-adjust seed --logit-adjust 1.0
run seed+graham seed --enhance graham
run seed+clahe seed --enhance clahe
run seed+class-weights seed --class-weighting balanced
run seed+balanced-sampler seed --sampler balanced
run seed+adamw+graham seed --enhance graham --optimizer adamw --lr 0.002 --weight-decay 0.05 --warmup-epochs 1 --label-smoothing 0.1
run screen screen
