#!/usr/bin/env bash
# The unstructured study on one GPU (the GPU preset, conf/experiment/gpu_unstructured*.yaml; README.md here):
# IMP's two seeds start first and train beside the dense reference and the 42-job grid (12 jobs at once), then
# every IMP round is tested and the study's CSV, figures and table are written.
#
#   bash experiments/gpu/unstructured_study.sh                  # -> experiments/studies/gpu_unstructured/
#   bash experiments/gpu/unstructured_study.sh hydra.launcher.n_jobs=6   # extra overrides go to every sweep
#
# Resumable as every study: a job with results.json is skipped, an interrupted one resumes from its last.ckpt.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
STUDY=gpu_unstructured
RUNS=experiments/studies/$STUDY/runs
mkdir -p "$RUNS"
start=$(date +%s)

"$PY" train.py -m experiment=${STUDY}_imp "$@" > "$RUNS/imp.log" 2>&1 &
imp=$!
"$PY" train.py -m experiment=${STUDY}_dense "$@"
"$PY" train.py -m experiment=$STUDY "$@"
if ! wait "$imp"; then
  echo "the IMP sweep failed: see $RUNS/imp.log" >&2
  exit 1
fi
for run in "$RUNS"/imp_*_seed*/; do
  "$PY" -m experiments.studies.imp_rounds "$run"
done
echo "trained in $(( $(date +%s) - start )) s"

"$PY" -m sparsetrain.sweep_summary "$RUNS"
"$PY" -m experiments.studies.plot $STUDY
"$PY" -m experiments.studies.tables --print $STUDY | tee "experiments/studies/$STUDY/table.md"
echo "done in $(( $(date +%s) - start )) s"
