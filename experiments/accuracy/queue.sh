#!/usr/bin/env bash
# The accuracy study, in priority order (one run at a time: the machine has 2 cores). Resumable: finished
# runs (with results.json) are skipped. A run takes 3-6 min here, so the order matters.
set -uo pipefail
R=experiments/accuracy/run.sh
cd "$(dirname "$0")/../.."
while pgrep -f "hydra.run.dir=experiments/[a-z_]*/runs/" >/dev/null; do sleep 10; done  # one run at a time
seed=0
$R dense_seed0 seed=0
experiments/accuracy/fresh_make_train.sh
for p in gmp granet pdp rigl set; do $R ${p}_s90_seed0 seed=0 +pruner=$p pruner.sparsity=0.9; done
for p in gmp granet pdp; do $R ${p}_s95_seed0 seed=0 +pruner=$p pruner.sparsity=0.95; done
for p in gmp granet pdp; do $R ${p}_s98_seed0 seed=0 +pruner=$p pruner.sparsity=0.98; done
for p in gmp pdp; do $R ${p}_nm24_seed0 seed=0 +pruner=$p pruner.granularity=nm pruner.sparsity=null; done
for p in rigl set; do for s in 95 98; do $R ${p}_s${s}_seed0 seed=0 +pruner=$p pruner.sparsity=0.$s; done; done
$R dense_seed1 seed=1
for s in 90 95; do for p in gmp granet pdp rigl set; do $R ${p}_s${s}_seed1 seed=1 +pruner=$p pruner.sparsity=0.$s; done; done
for p in gmp pdp; do $R ${p}_nm24_seed1 seed=1 +pruner=$p pruner.granularity=nm pruner.sparsity=null; done
# The issues ask for two seeds at every sparsity, 98 % included.
for p in gmp granet rigl set pdp; do $R ${p}_s98_seed1 seed=1 +pruner=$p pruner.sparsity=0.98; done
