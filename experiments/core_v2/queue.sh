#!/usr/bin/env bash
# Core v2 fidelity fixes on the shared accuracy protocol (experiments/accuracy/run.sh: ResNet-20, Fashion-MNIST,
# 3 epochs), in priority order, one run at a time, resumable (finished runs are skipped):
# PDP at 50 % channels and 2:4 after the tau/hardening fix, GraNet at 90 % and 95 % after the prune-then-regrow
# fix. Before-fix numbers: experiments/accuracy/runs (GraNet, PDP 2:4) and PDP channel runs made here from the
# pre-fix commit:  git worktree add /tmp/old eb5dead && ln -s $PWD/.venv /tmp/old/.venv && OLD=/tmp/old $0
# Table: python experiments/core_v2/summarize.py
set -uo pipefail
cd "$(dirname "$0")/../.."
export RUNS=${RUNS:-experiments/core_v2/runs}
R=experiments/accuracy/run.sh
before() {  # the pre-fix code, from the worktree in $OLD
  [ -n "${OLD:-}" ] || return 0
  (cd "$OLD" && RUNS=$OLDPWD/$RUNS experiments/accuracy/run.sh "$@")
}
for seed in 0 1; do
  $R pdp_channel50_seed$seed seed=$seed +pruner=pdp pruner.granularity=channel pruner.sparsity=0.5
  before pdp_channel50_before_seed$seed seed=$seed +pruner=pdp pruner.granularity=channel pruner.sparsity=0.5
  $R pdp_nm24_seed$seed seed=$seed +pruner=pdp pruner.granularity=nm pruner.sparsity=null
  for s in 90 95; do $R granet_s${s}_seed$seed seed=$seed +pruner=granet pruner.sparsity=0.$s; done
done
