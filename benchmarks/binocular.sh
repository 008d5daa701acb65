#!/usr/bin/env bash
# Single-eye vs both-eye model on the same patient split (the seed baseline's), same recipe.
#   bash benchmarks/binocular.sh [PRESET] [extra train options...]
# The single-eye model's report includes patient-level metrics (each patient takes its more diseased
# eye) in eval-test/patients/; the both-eye model's report is per patient with eyes/ per eye.
set -euo pipefail
preset=${1:-screen}
shift 1 2>/dev/null || true
export RUNS=${RUNS:-runs/binocular}
for model in resnet18 resnet18-binocular; do
  bash benchmarks/recipe.sh "$model" "$preset" --model "$model" "$@"
done
