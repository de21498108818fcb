"""Training-step time of every pruner relative to dense, measured interleaved in one run.

Each variant trains the same model from the same seed for `--steps` optimizer steps on fixed random
batches, driven through the pruner protocol exactly as `SparsityCallback` drives it (before_forward →
forward/backward → before_optimizer_step → step → after_optimizer_step). The pruning window spans the
whole measurement and `update_every` is short, so mask-update events (global top-k, prune-and-regrow,
PDP threshold refreshes) are included in the average. Variants are interleaved round by round; the
reported figure is the median ratio over rounds with its spread (min..max).

    .venv/bin/python -m experiments.overhead.bench                 # full table (~15 min on 2 CPU cores)
    .venv/bin/python -m experiments.overhead.bench --quick         # ResNet-20 only, batch 128
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from experiments.common import machine, markdown_table, summarize, write_json
from sparsetrain.models import build_model
from sparsetrain.pruners import list_pruners

PRUNERS = {
    "dense": None,
    "magnitude": {"sparsity": 0.9, "begin": 0.0},
    "gmp": {"sparsity": 0.9, "begin": 0.0, "end": 1.0},
    "imp": {"sparsity": 0.9},
    "granet": {"sparsity": 0.9, "begin": 0.0, "end": 0.8},
    "rigl": {"sparsity": 0.9, "regrow_end": 1.0},
    "set": {"sparsity": 0.9},
    "pdp": {"sparsity": 0.9, "warmup": 0.0, "end": 0.9, "finetune": 0.0},
}
MODELS = {
    "resnet20@28": ("builtin", "resnet20", 1, 28, {}),
    "vit_tiny_p4@32": ("timm", "vit_tiny_patch16_224", 3, 32, {"patch_size": 4}),
}


def time_variant(
    key: str, model_key: str, batch: int, steps: int, warmup: int, update_every: int, device: str
) -> float:
    """Median-free mean step time (s) over steps after `warmup`."""
    source, name, chans, size, kwargs = MODELS[model_key]
    torch.manual_seed(0)
    net = build_model(source, name, in_chans=chans, num_classes=10, image_size=size, **kwargs).to(device)
    pruner = None
    if PRUNERS[key] is not None:
        cfg = dict(PRUNERS[key])
        if key in ("gmp", "granet", "rigl", "set"):
            cfg["update_every"] = update_every
        if key == "pdp":
            cfg["threshold_every"] = update_every
        pruner = list_pruners()[key](**cfg)
        pruner.attach(net, steps, torch.zeros(1, chans, size, size, device=device))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    if pruner is not None:
        pruner.on_fit_start(opt, [])
    g = torch.Generator().manual_seed(1)
    data = [
        (
            torch.randn(batch, chans, size, size, generator=g).to(device),
            torch.randint(0, 10, (batch,), generator=g).to(device),
        )
        for _ in range(4)
    ]
    start = None
    for step in range(steps):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = data[step % len(data)]
        if pruner is not None:
            pruner.before_forward(step)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if pruner is not None:
            pruner.before_optimizer_step(step, opt)
        opt.step()
        if pruner is not None:
            pruner.after_optimizer_step(step, opt)
    float(loss.detach())  # waits for the last step
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (steps - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--update-every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 8])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--pruners", nargs="+", default=list(PRUNERS))
    parser.add_argument("--quick", action="store_true", help="resnet20@28 at batch 128 only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results.json")
    args = parser.parse_args()
    if args.quick:
        args.models, args.batches = ["resnet20@28"], [128]
    if "dense" not in args.pruners:
        args.pruners = ["dense", *args.pruners]
    table, rows = {}, []
    for model_key in args.models:
        for batch in args.batches:
            times: dict[str, list[float]] = {k: [] for k in args.pruners}
            for _ in range(args.rounds):
                for key in args.pruners:
                    times[key].append(
                        time_variant(key, model_key, batch, args.steps, args.warmup, args.update_every, args.device)
                    )
            cell = {}
            for key in args.pruners:
                ratios = [t / d for t, d in zip(times[key], times["dense"], strict=True)]
                cell[key] = {"step_ms": summarize([t * 1e3 for t in times[key]]), "ratio": summarize(ratios)}
                r = cell[key]["ratio"]
                rows.append(
                    [
                        model_key,
                        batch,
                        key,
                        f"{cell[key]['step_ms']['median']:.1f}",
                        f"{r['median']:.3f}",
                        f"{r['min']:.3f}..{r['max']:.3f}",
                    ]
                )
                print(rows[-1], flush=True)
            table[f"{model_key}/b{batch}"] = cell
            write_json(
                args.out,
                {
                    "machine": machine(),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "results": table,
                    "complete": False,
                },
            )
    write_json(args.out, {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "results": table})
    print(markdown_table(["model", "batch", "pruner", "step ms", "× dense (median)", "spread"], rows))


if __name__ == "__main__":
    main()
