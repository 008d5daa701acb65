#!/usr/bin/env bash
# The reference study's recipe (`seed` preset) on ODIR-5K, classes normal/dr/amd/glaucoma, for
# ResNet-18 and the seed CNN; same patient split (seed 0). Re-running continues an interrupted run.
#   bash benchmarks/seed_baseline.sh [DATA_MANIFEST] [RUNS_DIR] [MODELS...]
# Then: python benchmarks/results_table.py RUNS_DIR/* to print the rows for RESULTS.md.
set -euo pipefail
data=${1:-../shared/datasets/odir5k-256/manifest.csv}
runs=${2:-runs/seed-baseline}
shift 2 2>/dev/null || true
models=${*:-resnet18 seed-cnn}
for model in $models; do
  out="$runs/$model"
  if [ -f "$out/resume.pt" ]; then
    eyescreen train --data "$data" --out "$out" --resume --no-progress
  else
    eyescreen train --data "$data" --out "$out" --preset seed --model "$model" \
      --classes normal,dr,amd,glaucoma --no-progress
  fi
  eyescreen evaluate --checkpoint "$out/best.safetensors" --subset test --out "$out/eval-test" --no-progress
done
