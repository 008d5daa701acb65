#!/usr/bin/env bash
# Single-eye vs both-eye model on the same patient split (the seed baseline's split), same recipe.
#   bash benchmarks/binocular.sh [DATA_MANIFEST] [RUNS_DIR] [extra train options...]
# The single-eye model's report includes patient-level metrics (each patient takes its more diseased
# eye) in eval-test/patients/; the both-eye model's report is per patient with eyes/ per eye.
set -euo pipefail
data=${1:-../shared/datasets/odir5k-256/manifest.csv}
runs=${2:-runs/binocular}
shift 2 2>/dev/null || true
split=runs/seed-baseline/resnet18/split.csv  # the same patients in train/val/test as the baseline
[ -f "$split" ] && split_args=(--split "$split") || split_args=()
for model in resnet18 resnet18-binocular; do
  out="$runs/$model"
  if [ -f "$out/resume.pt" ]; then
    eyescreen train --data "$data" --out "$out" --resume --no-progress
  else
    eyescreen train --data "$data" --out "$out" --model "$model" --classes normal,dr,amd,glaucoma \
      "${split_args[@]}" --no-progress "$@"
  fi
  eyescreen evaluate --checkpoint "$out/best.safetensors" --subset test --out "$out/eval-test" --no-progress
done
