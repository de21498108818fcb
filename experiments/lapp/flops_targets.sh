#!/usr/bin/env bash
# LAPP meets its FLOPs budget: ResNet-20 and ResNet-56 at 0.7, 0.5 and 0.4 of the dense FLOPs, short real runs
# on Fashion-MNIST (120 optimizer steps, thresholds learning for the first 40, then slimmed), the final FLOPs
# measured by torch.utils.flop_counter on the slimmed network (results.json flops_sparse / flops_dense).
# Resumable. Table: .venv/bin/python experiments/lapp/summarize.py
set -uo pipefail
cd "$(dirname "$0")/../.."
out=experiments/lapp/flops_runs
for model in resnet20 resnet56; do
  for t in 0.7 0.5 0.4; do
    dir=$out/${model}_f${t/0./}
    [ -f "$dir/results.json" ] && { echo "skip $dir"; continue; }
    mkdir -p "$dir"
    .venv/bin/python train.py +pruner=lapp pruner.max_flops_ratio=$t model=$model trainer.max_steps=120 \
      trainer.max_epochs=null pruner.end=0.33 pruner.update_every=10 trainer.limit_val_batches=4 test=false \
      export=false plots=false logger=csv progress_bar=false "hydra.run.dir=$dir" > "$dir/log.txt" 2>&1
    rm -rf "$dir/checkpoints"
    grep "done:" "$dir/log.txt"
  done
done
