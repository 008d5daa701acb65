#!/usr/bin/env bash
# The reference study's recipe (`seed` preset) on ODIR-5K, classes normal/dr/amd/glaucoma, for
# ResNet-18 and the seed CNN; same patient split: benchmarks/splits/odir5k-4class-seed0.csv, the split
# `train --seed 0` made for the first of these runs, before linked patients were kept together
# (RESULTS "The same eye photographed again"). Re-running continues an interrupted run.
#   bash benchmarks/seed_baseline.sh [DATA_MANIFEST] [RUNS_DIR] [MODELS...]
# Then: python benchmarks/results_table.py RUNS_DIR/* to print the rows for RESULTS.md.
set -euo pipefail
data=${1:-../shared/datasets/odir5k-256/manifest.csv}
runs=${2:-runs/seed-baseline}
shift 2 2>/dev/null || true
models=${*:-resnet18 seed-cnn}
# glibc malloc returns large activation buffers to the OS every step (page faults, system time);
# tcmalloc keeps them (Debian: libtcmalloc-minimal4).
tcmalloc=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
if [ -f "$tcmalloc" ]; then export LD_PRELOAD="$tcmalloc"; echo "using tcmalloc"; fi
for model in $models; do
  out="$runs/$model"
  if [ -f "$out/resume.pt" ]; then
    eyescreen train --data "$data" --out "$out" --resume --no-progress
  else
    eyescreen train --data "$data" --out "$out" --preset seed --model "$model" \
      --classes normal,dr,amd,glaucoma --split "${SPLIT:-benchmarks/splits/odir5k-4class-seed0.csv}" --no-progress
  fi
  eyescreen evaluate --checkpoint "$out/best.safetensors" --subset test --out "$out/eval-test" --no-progress
done
