#!/usr/bin/env bash
# Fellow-eye evidence (issue 7): re-calibrate trained single-eye runs on their validation split — which
# now also chooses the fellow-eye weight (src/eyescreen/fellow.py) — then evaluate validation and the
# test split, each eye alone and blended with its fellow eye.
#   bash benchmarks/fellow_eye.sh runs/recipes/graham-findings-seed1 runs/recipes/graham-findings-seed2
# Rows for RESULTS.md: python benchmarks/results_table.py --fellow RUN...
set -euo pipefail
for run in "$@"; do
  eyescreen calibrate --checkpoint "$run/best.safetensors"
  eyescreen evaluate --checkpoint "$run/best.safetensors" --subset val --out "$run/eval-val" --no-progress
  eyescreen evaluate --checkpoint "$run/best.safetensors" --subset test --out "$run/eval-test" --no-progress
done
python benchmarks/results_table.py --fellow "$@"
