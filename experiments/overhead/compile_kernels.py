"""Kernels per training step of PDP's soft mask, eager and compiled (`model.compile=true`).

PDP's forward uses w·σ((w² − t²)·inv_tau·gain) on every targeted weight: eager, each of those elementwise ops is
its own kernel in every layer, forward and backward. Compiled, the compiler fuses them. This counts the device
kernels of one training step (forward + backward, profiled with `torch.profiler` after warm-up steps that compile)
for dense and PDP (soft phase, thresholds set), eager and compiled; the mask's kernels are PDP's minus dense's.
It also times the step (median over `--steps`, synchronised).

    python -m experiments.overhead.compile_kernels --device cuda --out experiments/overhead/compile_kernels_cuda.json
    .venv/bin/python -m experiments.overhead.compile_kernels --device cpu --model lenet5 --backend aot_eager \\
        --steps 2 --out compile_kernels_smoke.json   # the script's smoke test: CPU ops, not kernels

On the CPU the profiler sees operator calls, not kernels: the figures then only show that the script runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
import torch.nn.functional as F  # noqa: N812
from torch.profiler import ProfilerActivity, profile

from experiments.common import machine
from sparsetrain.models import build_model
from sparsetrain.pruners import list_pruners

MODELS = {"resnet20": (1, 28), "lenet5": (1, 28)}  # in_chans, image size (lightning_loop.py's ResNet-20 input)
NUM_CLASSES = 10


def build(model: str, variant: str, device: str, batch: int) -> tuple[torch.nn.Module, Any, torch.Tensor]:
    """The network (PDP: attached, in its soft phase with thresholds at 90 % of its budget), its pruner, a batch."""
    in_chans, size = MODELS[model]
    torch.manual_seed(0)
    net = build_model("builtin", model, in_chans=in_chans, num_classes=NUM_CLASSES, image_size=size).to(device)
    x = torch.randn(batch, in_chans, size, size, device=device)
    pruner = None
    if variant == "pdp":
        pruner = list_pruners()["pdp"](sparsity=0.9, warmup=0.0, end=0.5, finetune=0.0, threshold_every=50)
        pruner.attach(net, 100, x[:1])
        pruner.before_forward(0)  # soft masks on, thresholds set
    return net, pruner, x


def step_fn(net: torch.nn.Module, compiled: bool, backend: str):
    forward = torch.compile(net, backend=backend) if compiled else net

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        net.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()

    return step


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(args: argparse.Namespace, variant: str, compiled: bool) -> dict[str, Any]:
    """Kernels (CUDA) or operator calls (CPU) of one profiled step, the step's median time, graphs compiled."""
    torch._dynamo.reset()
    net, pruner, x = build(args.model, variant, args.device, args.batch)
    y = torch.randint(0, NUM_CLASSES, (args.batch,), device=args.device)
    step = step_fn(net, compiled, args.backend)
    for _ in range(3):  # compiles (forward and backward graphs) and warms up
        step(x, y)
    sync(args.device)
    activities = [ProfilerActivity.CUDA] if args.device == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        step(x, y)
        sync(args.device)
    if args.device == "cuda":
        kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    else:
        kernels = sum(1 for e in prof.events() if e.name.startswith("aten::"))
    times = []
    for _ in range(args.steps):
        sync(args.device)
        start = time.perf_counter()
        step(x, y)
        sync(args.device)
        times.append((time.perf_counter() - start) * 1e3)
    out = {"kernels": kernels, "step_ms": statistics.median(times)}
    if pruner is not None:
        out["soft_layers"] = len(pruner.soft.soft)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = {f"{v}{'_compiled' if c else ''}": measure(args, v, c) for c in (False, True) for v in ("dense", "pdp")}
    layers = rows["pdp"]["soft_layers"]
    mask = {mode: rows[f"pdp{mode}"]["kernels"] - rows[f"dense{mode}"]["kernels"] for mode in ("", "_compiled")}
    summary = {
        "unit": "CUDA kernels per step (forward + backward)" if args.device == "cuda" else "aten calls (CPU)",
        "soft_layers": layers,
        "mask_kernels_eager": mask[""],
        "mask_kernels_compiled": mask["_compiled"],
        "mask_kernels_per_layer_eager": mask[""] / layers,
        "mask_kernels_per_layer_compiled": mask["_compiled"] / layers,
        "pdp_over_dense_eager": rows["pdp"]["step_ms"] / rows["dense"]["step_ms"],
        "pdp_over_dense_compiled": rows["pdp_compiled"]["step_ms"] / rows["dense_compiled"]["step_ms"],
    }
    payload = {"machine": machine(), "config": vars(args) | {"out": str(args.out)}, "rows": rows, "summary": summary}
    args.out.write_text(json.dumps(payload, indent=2))
    for name, row in rows.items():
        print(f"{name:>14}: {row['kernels']} {summary['unit']}, {row['step_ms']:.2f} ms/step")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
