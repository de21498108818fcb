#!/usr/bin/env bash
# The official GraNet code's GMP against sparsetrain's GMP (and PDP) on the second protocol: ResNet-20,
# Fashion-MNIST with random crop + flip, 3 epochs, SGD Nesterov lr 0.1 x0.1 at 50 % and 75 % of the steps,
# wd 5e-4, batch 128; every Conv/Linear pruned (first and last included), one global magnitude ranking,
# cubic from step 0 to 50 % of the steps, an event every 50 steps. Sparsity 0.9 / 0.95 / 0.98, seeds 0 1 2.
# Both sides get the same overrides, so the same seeded model, batches, augmentation, optimizer and LR.
#   GRANET_CORE=<GraNet checkout>/CIFAR/sparselearning/core.py experiments/reference_gmp/queue.sh
# Resumable: runs with a results.json are skipped (an interrupted run starts over). One run at a time: it
# waits while any study sweep (train.py -m experiment=...) or run of this queue is going. Then:
#   .venv/bin/python -m experiments.reference_gmp.summarize
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${GRANET_CORE:?set GRANET_CORE to the official CIFAR/sparselearning/core.py (experiments/reference_gmp/setup.sh)}"
export RUNS=${RUNS:-experiments/reference_gmp/runs}
# enable_model_summary=false on both sides (the summary's example forward once broke with data.augment=true); it
# changes nothing in training.
PROTOCOL=(optim.schedule=multistep 'optim.milestones=[0.5,0.75]' data.augment=true trainer.enable_model_summary=false)
SCHEDULE=(pruner.keep_first_last=false pruner.allocation=global pruner.begin=0 pruner.end=0.5 pruner.update_every=50)
END600=(pruner.keep_first_last=false pruner.allocation=global pruner.begin=0 pruner.end=0.4751 pruner.update_every=50)

turn() {  # one training at a time: wait for any study sweep or run of this queue
  while pgrep -f "train.py -m experiment=|hydra.run.dir=experiments/[a-z_]*/runs/" >/dev/null; do sleep 10; done
}

start() {  # NAME OVERRIDES...: sets $dir to the run's folder and records the command; fails when the run is done
  dir=$RUNS/$1; shift
  if [ -f "$dir/results.json" ]; then echo "skip ${dir##*/} (done)"; return 1; fi
  turn
  mkdir -p "$dir"
  echo "$*" > "$dir/command.txt"
}

ref() {  # NAME overrides...: the official Masking in GMP mode (reference_gmp.py)
  start "$@" || return 0; shift
  .venv/bin/python experiments/reference_gmp/reference_gmp.py --core "$GRANET_CORE" logger=csv progress_bar=false \
    trainer.max_epochs=3 "hydra.run.dir=$dir" "$@" > "$dir/log.txt" 2>&1
  grep "done:" "$dir/log.txt"
}

ours() {  # NAME overrides...: sparsetrain through train.py, with the reference side's base overrides
  start "$@" || return 0; shift
  .venv/bin/python train.py logger=csv export=false progress_bar=false trainer.max_epochs=3 "hydra.run.dir=$dir" \
    "$@" > "$dir/log.txt" 2>&1
  rm -rf "$dir/checkpoints"
  grep "done:" "$dir/log.txt"
}

# 1. 98 %, where the issue saw 1.6 points (seed 0), then 90 % and 95 % (SPARSITIES="90 95" SEEDS=0: a subset)
for s in ${SPARSITIES:-98 90 95}; do for seed in ${SEEDS:-0 1 2}; do
  ref ref_s${s}_seed$seed seed=$seed pruner.sparsity=0.$s "${PROTOCOL[@]}" "${SCHEDULE[@]}"
  ours gmp_s${s}_seed$seed seed=$seed +pruner=gmp pruner.sparsity=0.$s "${PROTOCOL[@]}" "${SCHEDULE[@]}"
done; done
# 2. The official schedule's timing with sparsetrain's GMP: end at step 600 = 12 whole periods (the official
#    cubic runs over int(631.5 / 50) = 12 periods and stops after the 11th, at 0.97943). Events 0..550 then
#    match the official ones; the only difference left is sparsetrain's last event at 600 (to 0.98).
#    (pruner.end=0.4751: round(0.4751 * 1263) = 600.)
[[ " ${SPARSITIES:-98} " == *" 98 "* ]] && for seed in ${SEEDS:-0 1 2}; do
  ours gmp_end600_s98_seed$seed seed=$seed +pruner=gmp pruner.sparsity=0.98 "${PROTOCOL[@]}" "${END600[@]}"
done
# 3. sparsetrain's PDP on the same protocol (its own warm-up 0.1 and threshold refresh; budgets done at 0.5)
for s in ${SPARSITIES:-98 95 90}; do for seed in ${SEEDS:-0 1 2}; do
  ours pdp_s${s}_seed$seed seed=$seed +pruner=pdp pruner.sparsity=0.$s "${PROTOCOL[@]}" \
    pruner.keep_first_last=false pruner.allocation=global pruner.end=0.5
done; done
