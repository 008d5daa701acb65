#!/usr/bin/env bash
# One row of the ablation table (issue 7): train a preset, optionally with one lever changed, on the
# seed baseline's patient split, then evaluate on the test split once (SUBSET=val: on validation instead,
# for a choice made before the test split is read).
#   bash benchmarks/recipe.sh NAME PRESET [train options...]
#   bash benchmarks/recipe.sh screen screen
#   bash benchmarks/recipe.sh seed+augment seed --augment fundus
# Output: runs/recipes/NAME; re-running continues an interrupted run. Rows for RESULTS.md:
#   python benchmarks/results_table.py runs/recipes/*
set -euo pipefail
name=$1 preset=$2
shift 2
data=${DATA:-../shared/datasets/odir5k-256/manifest.csv}
out=${RUNS:-runs/recipes}/$name
# the patients in train/val/test of every ODIR-5K number in RESULTS.md: the seed baseline's split
split=${SPLIT:-benchmarks/splits/odir5k-4class-seed0.csv}
tcmalloc=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
if [ -f "$tcmalloc" ]; then export LD_PRELOAD="$tcmalloc"; fi
if [ -f "$out/resume.pt" ]; then
  eyescreen train --data "$data" --out "$out" --resume --no-progress
else
  eyescreen train --data "$data" --out "$out" --preset "$preset" --classes normal,dr,amd,glaucoma \
    --split "$split" --no-progress "$@"
fi
subset=${SUBSET:-test}
eyescreen evaluate --checkpoint "$out/best.safetensors" --subset "$subset" --out "$out/eval-$subset" --no-progress
