#!/usr/bin/env bash
# Does GraNet trail GMP on the 3-epoch budget because it regrows too much, too often? The shared accuracy
# protocol (experiments/accuracy/run.sh) with a smaller regrowth fraction (zeta0 0.5 -> 0.2) and with fewer
# events (update_every 50 -> 100), at 90 % and 98 %, seeds 0 and 1.
# Resumable: finished runs are skipped. Summarise with: .venv/bin/python -m experiments.granet_investigation.summarize
set -uo pipefail
cd "$(dirname "$0")/../.."
export RUNS=experiments/granet_investigation/runs
R=experiments/accuracy/run.sh
while pgrep -f "hydra.run.dir=experiments/[a-z_]*/runs/" >/dev/null; do sleep 10; done  # one run at a time
for seed in 0 1; do for s in 98 90; do
  $R granet_s${s}_zeta0.2_seed${seed} seed=$seed +pruner=granet pruner.sparsity=0.$s pruner.regrow_fraction=0.2
done; done
for seed in 0 1; do
  $R granet_s98_every100_seed${seed} seed=$seed +pruner=granet pruner.sparsity=0.98 pruner.update_every=100
done
