#!/usr/bin/env bash
# LAPP on the shared accuracy protocol (experiments/accuracy/run.sh: ResNet-20, full Fashion-MNIST on the
# device, 3 epochs, batch 128, SGD Nesterov lr 0.1, wd 5e-4, cosine LR), against channel GMP at the same FLOPs
# budget. LAPP keeps its own schedule (begin 0, slimmed at end 0.3); GMP prunes channels uniformly from 0 to 0.5
# at the channel sparsity whose FLOPs meet the budget (0.36 -> 0.488, 0.46 -> 0.396 of dense, measured on
# ResNet-20 by experiments/lapp/calibrate_gmp.py). Dense: experiments/accuracy/runs/dense_seed*.
# Resumable (finished runs are skipped). Table: .venv/bin/python experiments/lapp/summarize.py
set -uo pipefail
cd "$(dirname "$0")/../.."
export RUNS=${RUNS:-experiments/lapp/runs}
R=experiments/accuracy/run.sh
for seed in ${SEEDS:-0}; do
  $R lapp_f50_seed$seed seed=$seed +pruner=lapp pruner.max_flops_ratio=0.5
  $R gmpch_f50_seed$seed seed=$seed +pruner=gmp pruner.granularity=channel pruner.allocation=uniform pruner.sparsity=0.36
  $R lapp_f40_seed$seed seed=$seed +pruner=lapp pruner.max_flops_ratio=0.4
  # a density floor on the learned allocation: every group keeps at least a quarter of its channels
  $R lapp_mk25_f50_seed$seed seed=$seed +pruner=lapp pruner.max_flops_ratio=0.5 pruner.min_keep=0.25
  $R lapp_mk25_f40_seed$seed seed=$seed +pruner=lapp pruner.max_flops_ratio=0.4 pruner.min_keep=0.25
  $R gmpch_f40_seed$seed seed=$seed +pruner=gmp pruner.granularity=channel pruner.allocation=uniform pruner.sparsity=0.46
done
# a higher floor (the default now): every group keeps at least half of its channels; seed 0 then seed 1
for seed in ${SEEDS_MK50:-0 1}; do
  $R lapp_mk50_f50_seed$seed seed=$seed +pruner=lapp pruner.max_flops_ratio=0.5 pruner.min_keep=0.5
  $R gmpch_f50_seed$seed seed=$seed +pruner=gmp pruner.granularity=channel pruner.allocation=uniform pruner.sparsity=0.36
  $R lapp_mk50_f40_seed$seed seed=$seed +pruner=lapp pruner.max_flops_ratio=0.4 pruner.min_keep=0.5
  $R gmpch_f40_seed$seed seed=$seed +pruner=gmp pruner.granularity=channel pruner.allocation=uniform pruner.sparsity=0.46
done
