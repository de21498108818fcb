#!/usr/bin/env bash
# `make train` from a fresh clone of this repository's HEAD, timed: setup and training separately.
# Writes timing.txt and the run's results.json next to this script (W&B offline logging included).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$repo/experiments/fresh_clone
fresh=$(mktemp -d /tmp/sparsetrain-fresh.XXXX)
git clone -q "$repo" "$fresh/sparsetrain"
cd "$fresh/sparsetrain"
t0=$(date +%s); make setup > "$fresh/setup.log" 2>&1; t1=$(date +%s)
make train ARGS="hydra.run.dir=$fresh/run" > "$fresh/train.log" 2>&1; t2=$(date +%s)
cp "$fresh/run/results.json" "$out/results.json"
echo "make train (fresh clone): setup $((t1 - t0)) s, make train $((t2 - t1)) s" | tee "$out/timing.txt"
