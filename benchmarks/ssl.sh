#!/usr/bin/env bash
# Self-supervised pre-training (issue 7's "pre-training without downloading anything"), then
# fine-tuning with a recipe; compare with the same recipe's row trained from random weights.
#   bash benchmarks/ssl.sh NAME PRESET [train options...]
#   SSL_EPOCHS=8 bash benchmarks/ssl.sh seed+adamw+graham+ssl seed --enhance graham --optimizer adamw ...
# SimCLR sees every ODIR photograph (labelled for this task or not) except those of the patients
# the fine-tuning split puts in validation or test (--holdout-split), at the fine-tuning image size.
set -euo pipefail
name=$1 preset=$2
shift 2
data=${DATA:-../shared/datasets/odir5k-256/manifest.csv}
split=${SPLIT:-benchmarks/splits/odir5k-4class-seed0.csv}  # the seed baseline's split (recipe.sh)
size=${SSL_SIZE:-128}
out=${SSL_OUT:-runs/ssl/simclr-$size}
tcmalloc=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
if [ -f "$tcmalloc" ]; then export LD_PRELOAD="$tcmalloc"; fi
if [ -f "$out/pretrain-resume.pt" ]; then
  eyescreen pretrain "$data" --out "$out" --resume --no-progress
else
  eyescreen pretrain "$data" --out "$out" --image-size "$size" --enhance graham \
    --epochs "${SSL_EPOCHS:-8}" --holdout-split "$split" --no-progress
fi
bash benchmarks/recipe.sh "$name" "$preset" --init "$out/pretrained.safetensors" "$@"
