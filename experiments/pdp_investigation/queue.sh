#!/usr/bin/env bash
# Why PDP trails GMP at high sparsity: the shared accuracy protocol (experiments/accuracy/run.sh) with PDP's
# temperature and allocation varied, at 98 % first (largest gap), then the chosen setting at 90/95 %.
# Resumable: finished runs are skipped. Summarise with: .venv/bin/python -m experiments.pdp_investigation.summarize
set -uo pipefail
cd "$(dirname "$0")/../.."
export RUNS=experiments/pdp_investigation/runs
R=experiments/accuracy/run.sh
while pgrep -f "hydra.run.dir=experiments/[a-z_]*/runs/" >/dev/null; do sleep 10; done  # one run at a time
for tau in 0.2 0.5 1.0 2.0 4.0; do $R pdp_s98_tau${tau}_seed0 seed=0 +pruner=pdp pruner.sparsity=0.98 pruner.tau=$tau; done
$R pdp_s90_tau1.0_seed0 seed=0 +pruner=pdp pruner.sparsity=0.9 pruner.tau=1.0
