#!/usr/bin/env bash
# The shared accuracy protocol: ResNet-20, full Fashion-MNIST on the device, 3 epochs,
# batch 128, SGD Nesterov lr 0.1, wd 5e-4, cosine LR, pruning from begin=0 to end=0.5, update_every=50.
# Usage: experiments/accuracy/run.sh NAME [hydra overrides...]   (skips runs that already have results.json)
# RUNS=<dir> puts the run elsewhere than experiments/accuracy/runs (e.g. a follow-up study).
# Example: experiments/accuracy/run.sh gmp_s90_seed0 seed=0 +pruner=gmp pruner.sparsity=0.9
set -euo pipefail
cd "$(dirname "$0")/../.."
name=$1; shift
dir=${RUNS:-experiments/accuracy/runs}/$name
if [ -f "$dir/results.json" ]; then echo "skip $name (done)"; exit 0; fi
mkdir -p "$dir"
echo "$*" > "$dir/command.txt"
.venv/bin/python train.py logger=csv export=false progress_bar=false trainer.max_epochs=3 \
  "hydra.run.dir=$dir" "$@" > "$dir/log.txt" 2>&1
rm -rf "$dir/checkpoints"
grep "done:" "$dir/log.txt"
