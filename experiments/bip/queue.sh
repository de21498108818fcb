#!/usr/bin/env bash
# BiP vs IMP on the shared protocol (ResNet-20, Fashion-MNIST, 3 epochs = 1263 optimizer steps per run).
# BiP: one run per target (dense warm-up for the first half, bi-level for the second, `conf/pruner/bip.yaml`).
# IMP: ONE run of 13 rounds to 95 %, each round the same 1263 steps as BiP's whole run (learning-rate rewinding
# to step 0, Renda et al. 2020); every round prunes 1 - 0.05^(1/13) = 20.6 % of the remaining weights, so round 10
# ends at 90.0 % and round 13 at 95.0 %. `snapshot_every_n_steps=1263` keeps each round's trained ticket, which
# `imp_rounds.py` evaluates on the test set (it may also run during the fit). Then: .venv/bin/python -m experiments.bip.summarize
# SEEDS="0 1" adds BiP seeds (the committed study ran seed 0: the IMP run alone takes ~2 h on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
export RUNS=experiments/bip/runs
for seed in ${SEEDS:-0}; do
  for s in 90 95; do
    experiments/accuracy/run.sh "bip_s${s}_seed${seed}" "seed=${seed}" +pruner=bip "pruner.sparsity=0.${s}"
  done
  [ "$seed" = 0 ] || continue
  dir=$RUNS/imp_lr_s95_seed0
  if [ ! -f "$dir/results.json" ]; then
    mkdir -p "$dir"
    .venv/bin/python train.py logger=csv export=false progress_bar=false plots=false trainer.max_epochs=3 \
      seed=0 +pruner=imp pruner.sparsity=0.95 pruner.rounds=13 pruner.rewinding=lr pruner.rewind_step=0 \
      snapshot_every_n_steps=1263 "hydra.run.dir=$dir" > "$dir/log.txt" 2>&1
  fi
  if [ ! -f "$dir/rounds.json" ]; then
    .venv/bin/python -m experiments.bip.imp_rounds "$dir" && rm -rf "$dir/checkpoints"
  fi
done
