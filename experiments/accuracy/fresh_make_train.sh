#!/usr/bin/env bash
# `make train` from a fresh clone of this repository's HEAD, timed: setup and training separately.
# The run's results.json is the study's granet_s90_seed0 (same protocol; W&B offline logging included).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$repo/experiments/accuracy/runs/granet_s90_seed0
[ -f "$out/results.json" ] && { echo "skip make train (done)"; exit 0; }
fresh=$(mktemp -d /tmp/sparsetrain-fresh.XXXX)
git clone -q "$repo" "$fresh/sparsetrain"
cd "$fresh/sparsetrain"
t0=$(date +%s); make setup > "$fresh/setup.log" 2>&1; t1=$(date +%s)
make train ARGS="hydra.run.dir=$fresh/run" > "$fresh/train.log" 2>&1; t2=$(date +%s)
mkdir -p "$out"
cp "$fresh/run/results.json" "$out/results.json"
grep "done:" "$fresh/train.log" | tail -1 > "$out/log.txt"
echo "make train (fresh clone): setup $((t1 - t0)) s, make train $((t2 - t1)) s" | tee "$out/timing.txt"
echo "+pruner=granet (make train, fresh clone)" > "$out/command.txt"
