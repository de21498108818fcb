#!/usr/bin/env bash
# The GPU check: every pruner trained with train.py on the accelerator, the tests marked `gpu`, and the
# Lightning-loop overhead benchmark, with at most 8 result files written into RESULTS_DIR.
#
#   RESULTS_DIR=/some/dir bash experiments/gpu/check.sh
#
# On a GPU (about 6 minutes on one H100/H200): ResNet-20 on Fashion-MNIST, 0.3 epoch per pruner with
# trainer=gpu (bf16-mixed); the overhead benchmark at batch 128 and 512 for ResNet-20 and the ViT, bf16-mixed,
# with torch.cuda.set_sync_debug_mode("error") on the steady-state steps; then compiled rows (`model.compile`:
# dense, magnitude and PDP through inductor, ResNet-20 at batch 128, one round) and the kernels of PDP's soft mask
# per step, eager and compiled (`experiments/overhead/compile_kernels.py`): about 4 minutes more; COMPILE=0 skips.
# Without a GPU it runs the same steps with a tiny budget on the CPU (fake data, LeNet-5, a few benchmark
# steps, the compiled ones on the aot_eager backend), so the script itself is tested everywhere
# (`tests/test_gpu_check.py`, marked slow: ~4 min on 2 cores).
# Files: env.json, runs.json, runs.log, pytest.txt, overhead.json, overhead.txt, compile_kernels.json,
# summary.txt (8).
set -uo pipefail
cd "$(dirname "$0")/../.."
RESULTS_DIR=${RESULTS_DIR:-experiments/gpu/results}
mkdir -p "$RESULTS_DIR"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
export PYTHONUNBUFFERED=1 WANDB_MODE=${WANDB_MODE:-disabled} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  GPU=1
  TRAIN=(trainer=gpu data=fashion_mnist model=resnet20 trainer.max_epochs=1 trainer.limit_train_batches=0.3
         trainer.limit_val_batches=0.2)
  BENCH=(--device cuda --precision bf16-mixed --steps 150 --warmup-steps 20 --rounds 2 --sync-debug)
  BENCH_CASES="resnet20:128 resnet20:512 vit:128 vit:512"
  COMPILED=(--device cuda --precision bf16-mixed --steps 100 --warmup-steps 20 --rounds 1 --model resnet20 --batch 128)
  KERNELS=(--device cuda --model resnet20 --batch 128)
else
  GPU=0
  TRAIN=(trainer=cpu data=fake data.num_samples=96 data.num_test=32 data.batch_size=16 data.image_size=16
         data.in_chans=1 model=lenet5 trainer.max_epochs=2)
  BENCH=(--device cpu --steps 4 --warmup-steps 1 --rounds 1)
  BENCH_CASES="resnet20:8"
  COMPILED=(--device cpu --steps 3 --warmup-steps 2 --rounds 1 --model resnet20 --batch 8 --compile-backend aot_eager)
  KERNELS=(--device cpu --model lenet5 --batch 8 --steps 2 --backend aot_eager)
fi
COMPILE=${COMPILE:-1}

# 1. The machine.
"$PY" - "$RESULTS_DIR/env.json" "$GPU" <<'EOF'
import json, platform, sys
import torch, pytorch_lightning as pl
info = {"gpu": sys.argv[2] == "1", "torch": torch.__version__, "lightning": pl.__version__,
        "python": platform.python_version(), "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"}
json.dump(info, open(sys.argv[1], "w"), indent=2)
print("check on", info["device"])
EOF

# 2. train.py for every pruner, then each run's results.json, exported model and reached sparsity.
: > "$RESULTS_DIR/runs.log"
declare -A RUNS=(
  [magnitude]="+pruner=magnitude pruner.sparsity=0.9"
  [gmp]="+pruner=gmp pruner.sparsity=0.9 pruner.update_every=5"
  [gmp_channel]="+pruner=gmp pruner.granularity=channel pruner.sparsity=0.5 pruner.update_every=5"
  [imp]="+pruner=imp pruner.sparsity=0.5 pruner.rounds=2"
  [granet]="+pruner=granet pruner.sparsity=0.9 pruner.update_every=5"
  [rigl]="+pruner=rigl pruner.sparsity=0.9 pruner.update_every=5"
  [set]="+pruner=set pruner.sparsity=0.9 pruner.update_every=5"
  [pdp]="+pruner=pdp pruner.sparsity=0.9"
  [pdp_nm]="+pruner=pdp pruner.granularity=nm"
  [bip]="+pruner=bip pruner.sparsity=0.9"
  [lapp]="+pruner=lapp pruner.max_flops_ratio=0.5 pruner.update_every=5"
)
for name in $(printf '%s\n' "${!RUNS[@]}" | sort); do
  echo "=== $name: ${RUNS[$name]}" >> "$RESULTS_DIR/runs.log"
  # shellcheck disable=SC2086
  "$PY" train.py "${TRAIN[@]}" logger=csv progress_bar=false ${RUNS[$name]} "hydra.run.dir=$WORK/runs/$name" \
    > "$WORK/$name.log" 2>&1
  echo "exit $?" >> "$RESULTS_DIR/runs.log"
  tail -n 5 "$WORK/$name.log" >> "$RESULTS_DIR/runs.log"
done
"$PY" experiments/gpu/check_runs.py "$WORK/runs" "$RESULTS_DIR/runs.json"
runs_rc=$?

# 3. The tests marked gpu (skipped without CUDA).
"$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:randomly > "$RESULTS_DIR/pytest.txt" 2>&1
pytest_rc=$?
[ "$pytest_rc" = 5 ] && pytest_rc=0  # nothing collected is not a failure

# 4. The Lightning-loop overhead benchmark.
: > "$RESULTS_DIR/overhead.txt"
bench_rc=0
for case in $BENCH_CASES; do
  model=${case%%:*}; batch=${case##*:}
  "$PY" experiments/overhead/lightning_loop.py --model "$model" --batch "$batch" "${BENCH[@]}" \
    --out "$WORK/overhead_${model}_b$batch.json" >> "$RESULTS_DIR/overhead.txt" 2>&1 || bench_rc=1
done
compile_rc=0
if [ "$COMPILE" = 1 ]; then
  # compiled rows next to their eager ones; ratios to compiled dense too (`× dense compiled`)
  "$PY" experiments/overhead/lightning_loop.py "${COMPILED[@]}" \
    --variants dense,magnitude,pdp,dense_compiled,magnitude_compiled,pdp_compiled \
    --out "$WORK/overhead_compiled.json" >> "$RESULTS_DIR/overhead.txt" 2>&1 || compile_rc=1
  "$PY" -m experiments.overhead.compile_kernels "${KERNELS[@]}" --out "$RESULTS_DIR/compile_kernels.json" \
    >> "$RESULTS_DIR/overhead.txt" 2>&1 || compile_rc=1
fi
"$PY" - "$RESULTS_DIR/overhead.json" "$WORK" <<'EOF'
import json, pathlib, sys
found = sorted(pathlib.Path(sys.argv[2]).glob("overhead_*.json"))
json.dump([json.loads(p.read_text()) for p in found], open(sys.argv[1], "w"), indent=1)
EOF

{
  echo "gpu=$GPU runs_rc=$runs_rc pytest_rc=$pytest_rc bench_rc=$bench_rc compile_rc=$compile_rc" \
    "seconds=$(( $(date +%s) - start ))"
  tail -n 1 "$RESULTS_DIR/pytest.txt"
} | tee "$RESULTS_DIR/summary.txt"
[ "$runs_rc" = 0 ] && [ "$pytest_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$compile_rc" = 0 ]
