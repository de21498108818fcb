"""BiP's step time against dense, step by step interleaved (robust on a shared CPU), with its parts.

`experiments/overhead/lightning_loop.py --variants bip` gives the figure inside a real Lightning `Trainer`;
on a loaded machine one round of it is dominated by drift (dense steps varied 49..87 ms within one fit).
This script runs a dense ResNet-20 and a BiP one (unstructured, global top-k, 90 %, bi-level on every step)
side by side in one process and alternates their optimizer steps, so load drift hits both alike; the ratio
is the median over pairs of (BiP step / dense step). It also times the parts: forward + backward of each net
(BiP's goes through the parametrization w ↦ m⊙w), and BiP's own per-step work, the score gradient and the
lower-level gradient split (`before_optimizer_step`), and the score step with the top-k projection
(`after_optimizer_step`).

    .venv/bin/python -m experiments.bip.step_time --batch 8 --pairs 60 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from experiments.common import machine, markdown_table, write_json
from sparsetrain.models import build_model
from sparsetrain.pruners import BiP


def make(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("builtin", "resnet20", in_chans=1, num_classes=10, image_size=28)


def sgd(net: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=60, help="measured (dense, BiP) step pairs")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured pairs first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "step_time_resnet20_cpu.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    total = args.warmup + args.pairs
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(args.batch, 1, 28, 28, generator=g), torch.randint(0, 10, (args.batch,), generator=g))]
    dense, sparse = make(0), make(0)
    pruner = BiP(sparsity=0.9, warmup=0.0, finetune=0.0)
    pruner.attach(sparse, total, torch.zeros(1, 1, 28, 28))
    opt_dense, opt_sparse = sgd(dense), sgd(sparse)
    pruner.on_fit_start(opt_sparse, [])
    parts = ("dense", "bip", "dense_fwd_bwd", "bip_fwd_bwd", "bip_before", "bip_after")
    times: dict[str, list[float]] = {k: [] for k in parts}
    for step in range(total):
        x, y = data[step % len(data)]
        t0 = time.perf_counter()
        opt_dense.zero_grad()
        F.cross_entropy(dense(x), y).backward()
        ta = time.perf_counter()
        opt_dense.step()
        t1 = time.perf_counter()
        pruner.before_forward(step)
        opt_sparse.zero_grad()
        F.cross_entropy(sparse(x), y).backward()
        t2 = time.perf_counter()
        pruner.before_optimizer_step(step, opt_sparse)
        t3 = time.perf_counter()
        opt_sparse.step()
        t4 = time.perf_counter()
        pruner.after_optimizer_step(step, opt_sparse)
        t5 = time.perf_counter()
        if step >= args.warmup:
            times["dense"].append((t1 - t0) * 1e3)
            times["bip"].append((t5 - t1) * 1e3)
            times["dense_fwd_bwd"].append((ta - t0) * 1e3)
            times["bip_fwd_bwd"].append((t2 - t1) * 1e3)
            times["bip_before"].append((t3 - t2) * 1e3)
            times["bip_after"].append((t5 - t4) * 1e3)
    ratios = [b / d for b, d in zip(times["bip"], times["dense"], strict=True)]
    q = statistics.quantiles(ratios, n=4)
    summary = {k: statistics.median(v) for k, v in times.items()}
    summary.update(ratio_median=statistics.median(ratios), ratio_q1=q[0], ratio_q3=q[2])
    write_json(
        args.out,
        {
            "machine": machine(),
            "config": vars(args) | {"out": str(args.out)},
            "summary": summary,
            "times_ms": times,
            "sparsity": pruner.global_sparsity(),
            "score_steps": pruner.score_steps,
        },
    )
    rows = [[k, f"{summary[k]:.2f}"] for k in parts]
    print(markdown_table(["step part (median ms)", "ms"], rows))
    print(
        f"BiP / dense per pair: median {summary['ratio_median']:.3f} (IQR {q[0]:.3f}..{q[2]:.3f}), "
        f"{args.pairs} pairs, batch {args.batch}, {args.threads} thread(s); wrote {args.out}"
    )


if __name__ == "__main__":
    main()
