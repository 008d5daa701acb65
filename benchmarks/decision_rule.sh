#!/usr/bin/env bash
# Fit the decision rule (and temperature, referable threshold) on validation for already trained runs,
# then evaluate them on the test split; new training runs get the rule at the end of `train` already.
#   bash benchmarks/decision_rule.sh runs/recipes/screen runs/ablation/seed+graham ...
# Table: python benchmarks/results_table.py --decision RUN...
set -euo pipefail
for run in "$@"; do
  eyescreen calibrate --checkpoint "$run/best.safetensors"
  eyescreen evaluate --checkpoint "$run/best.safetensors" --subset test --out "$run/eval-test" --no-progress
done
