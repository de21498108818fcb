#!/usr/bin/env bash
# Core v2 fidelity fixes on the shared accuracy protocol (experiments/accuracy/run.sh), two seeds each:
# GraNet at 90 % and 95 % after the prune-then-regrow fix, PDP at 50 % channels and 2:4 after the tau/hardening fix.
# Resumable (finished runs are skipped); one run at a time. Before-fix numbers: experiments/accuracy/runs
# (GraNet, PDP 2:4) and PDP channel runs made here from the pre-fix commit (BEFORE=1, run from a worktree of eb5dead).
set -uo pipefail
cd "$(dirname "$0")/../.."
export RUNS=${RUNS:-experiments/core_v2/runs}
R=experiments/accuracy/run.sh
while pgrep -f "hydra.run.dir=experiments/[a-z_0-9]*/runs/" >/dev/null; do sleep 10; done
for what in ${WHAT:-granet pdp}; do
  for seed in 0 1; do
    if [ "$what" = granet ]; then
      for s in 90 95; do $R granet_s${s}_seed$seed seed=$seed +pruner=granet pruner.sparsity=0.$s; done
    else
      $R pdp_channel50_seed$seed seed=$seed +pruner=pdp pruner.granularity=channel pruner.sparsity=0.5
      $R pdp_nm24_seed$seed seed=$seed +pruner=pdp pruner.granularity=nm pruner.sparsity=null
    fi
  done
done
