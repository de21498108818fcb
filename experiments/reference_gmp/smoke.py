"""Smoke check (a few dozen steps): the official GMP and sparsetrain's GMP from the same start, event by event.

    .venv/bin/python experiments/reference_gmp/smoke.py --core $GRANET_CORE --steps 60 --every 5 --sparsity 0.98

Both sides are built by `sparsetrain.app.prepare` with the same overrides (the protocol of `queue.sh`, a budget
of `--steps` optimizer steps, no validation), so they start from the same weights and see the same batches.
Each prune event's masks are kept; the script prints, per event step, the sparsity each side reached and how
many positions the two masks agree on, then the per-layer densities after each side's last event. Until
the masks differ the two runs are the same computation (sparsetrain zeroes the gradient of a pruned weight
before the step, the official code zeroes the weight and its momentum after it: the same numbers for SGD).
`--step-check N` first runs N optimizer steps of two copies of the network under one fixed random mask:
one the sparsetrain way (`MaskSet`: gradients masked before the step, weights after), one through the official
`Masking.step()` on its own optimizer (step, then weights and momentum buffers masked), and prints the largest
difference in any weight and any kept momentum entry (0.0: the two per-step mechanisms are the same numbers).
Writes the tables as JSON to `--out` (default: no file).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.common import markdown_table  # noqa: E402
from experiments.reference_gmp.reference_gmp import (  # noqa: E402
    OfficialGMP,
    build,
    compose,
    cuda_calls_to,
    load_core,
    make_trainer,
)

PROTOCOL = [
    "optim.schedule=multistep",
    "optim.milestones=[0.5,0.75]",
    "data.augment=true",
    "trainer.enable_model_summary=false",
    "trainer.limit_val_batches=0",
    "logger=csv",
    "progress_bar=false",
]


class MaskRecorder(pl.Callback):
    """sparsetrain's masks after every prune event, keyed by the event's step (weights after that many steps)."""

    def __init__(self, pruner) -> None:
        self.pruner, self.seen, self.snapshots = pruner, 0, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.pruner.events != self.seen:
            self.seen = self.pruner.events
            self.snapshots[trainer.global_step - 1] = {
                k: v.detach().clone() for k, v in self.pruner.mask_dict().items()
            }


def sparsity(masks: dict[str, torch.Tensor]) -> float:
    return 1.0 - sum(int(m.count_nonzero()) for m in masks.values()) / sum(m.numel() for m in masks.values())


def densities(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k.removesuffix(".weight"): int(m.count_nonzero()) / m.numel() for k, m in masks.items()}


def step_check(core, common: list[str], steps: int, density: float = 0.05) -> dict[str, float]:
    """Both per-step mask mechanisms under one fixed random mask, on real batches: the largest differences."""
    import copy
    from types import SimpleNamespace

    from sparsetrain.app import prepare
    from sparsetrain.masking import MaskSet
    from sparsetrain.optim import build_optimizer, param_groups

    parts = prepare(compose(common))
    cfg, module, dm = parts["cfg"], parts["module"], parts["datamodule"]
    dm.setup("fit")
    x, y = dm.splits["train"]
    o = cfg.optim
    nets = [module.model, copy.deepcopy(module.model)]
    opts = [
        build_optimizer(param_groups(n, o.weight_decay, o.no_decay_norm_bias), "sgd", o.lr, o.momentum, o.nesterov)
        for n in nets
    ]
    names = [n for n, p in nets[0].named_parameters() if p.dim() in (2, 4)]
    g = torch.Generator().manual_seed(0)
    masks = {
        n: (torch.rand(p.shape, generator=g) < density).float() for n, p in nets[0].named_parameters() if n in names
    }
    ours = MaskSet(nets[0], names)
    for n, m in masks.items():
        ours.set(n, m)
    ours.apply_to_weights()
    args = SimpleNamespace(
        method="GMP",
        sparse_init="GMP",
        fix=False,
        update_frequency=10**9,
        init_density=1.0,
        final_density=density,
        init_prune_epoch=0,
        final_prune_epoch=0,
        multiplier=1,
        rm_first=False,
    )
    theirs = core.Masking(
        opts[1],
        prune_rate_decay=core.CosineDecay(0.5, steps),
        args=args,
        train_loader=[None],
        growth_mode="gradient",
        redistribution_mode="none",
    )
    with cuda_calls_to(torch.device("cpu")):
        theirs.add_module(nets[1])
    for n, m in masks.items():
        theirs.masks[n] = m.clone()
    theirs.apply_mask()
    worst_w = worst_buf = 0.0
    for i in range(steps):
        xb, yb = x[i * 128 : (i + 1) * 128], y[i * 128 : (i + 1) * 128]
        for k, (net, opt) in enumerate(zip(nets, opts, strict=True)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xb), yb).backward()
            if k == 0:
                ours.apply_to_grads()
                opt.step()
                ours.apply_to_weights()
            else:
                theirs.step()
        pa, pb = dict(nets[0].named_parameters()), dict(nets[1].named_parameters())
        worst_w = max(worst_w, max(float((pa[n] - pb[n]).detach().abs().max()) for n in pa))
        for n in names:
            ba, bb = opts[0].state[pa[n]]["momentum_buffer"], opts[1].state[pb[n]]["momentum_buffer"]
            worst_buf = max(worst_buf, float(((ba - bb) * masks[n]).abs().max()))
    return {"steps": steps, "density": density, "max_abs_weight_diff": worst_w, "max_abs_kept_momentum_diff": worst_buf}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", default=os.environ.get("GRANET_CORE"))
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of the event comparison (0: skip)")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.98)
    parser.add_argument("--end", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/reference_gmp_smoke")
    parser.add_argument("--out", default=None)
    parser.add_argument("--step-check", type=int, default=0, help="steps of the fixed-mask mechanism check (0: skip)")
    a = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    core, _ = load_core(a.core)
    common = [*PROTOCOL, f"seed={a.seed}", f"trainer.max_steps={max(1, a.steps)}"]
    work = Path(a.workdir)
    check = step_check(core, common, a.step_check) if a.step_check else None
    if check:
        print("fixed-mask step check:", json.dumps(check))
    if a.steps == 0:
        return

    # sparsetrain's GMP
    from sparsetrain.callback import SparsityCallback

    ours = [
        "+pruner=gmp",
        f"pruner.sparsity={a.sparsity}",
        "pruner.keep_first_last=false",
        "pruner.allocation=global",
        "pruner.begin=0",
        f"pruner.end={a.end}",
        f"pruner.update_every={a.every}",
    ]
    from sparsetrain.app import prepare

    parts = prepare(compose([*common, *ours]))
    pruner = parts["pruner"]
    recorder = MaskRecorder(pruner)
    trainer = make_trainer(parts, [SparsityCallback(pruner, finalize=False), recorder], work / "sparsetrain")
    trainer.fit(parts["module"], datamodule=parts["datamodule"])
    project = recorder.snapshots

    # the official Masking, GMP mode
    ref = OfficialGMP(core, a.sparsity, 0.0, a.end, a.every, snapshot=True)
    trainer, parts = build(common, [ref], work / "official")
    trainer.fit(parts["module"], datamodule=parts["datamodule"])
    official = ref.snapshots

    rows, table = [], []
    for step in sorted(set(project) | set(official)):
        p, o = project.get(step), official.get(step)
        row = {"step": step, "sparsetrain": sparsity(p) if p else None, "official": sparsity(o) if o else None}
        if p and o:
            same = sum(int((p[k].bool() == o[k].bool()).sum()) for k in o)
            both = sum(int((p[k].bool() & o[k].bool()).sum()) for k in o)
            either = sum(int((p[k].bool() | o[k].bool()).sum()) for k in o)
            kept_p = sum(int(p[k].count_nonzero()) for k in o)
            kept_o = sum(int(o[k].count_nonzero()) for k in o)
            row.update(
                agree=same / sum(m.numel() for m in o.values()),
                kept_jaccard=both / either,
                kept_sparsetrain=kept_p,
                kept_official=kept_o,
            )
        rows.append(row)
        fmt = lambda v: "" if v is None else (f"{v:.5f}" if isinstance(v, float) else str(v))  # noqa: E731
        table.append(
            [
                step,
                fmt(row["sparsetrain"]),
                fmt(row["official"]),
                fmt(row.get("kept_sparsetrain")),
                fmt(row.get("kept_official")),
                fmt(row.get("kept_jaccard")),
            ]
        )
    print(markdown_table(["step", "sparsetrain", "official", "kept (st)", "kept (off.)", "kept Jaccard"], table))

    last_p, last_o = max(project), max(official)
    common_last = max(set(project) & set(official))
    dp, do, dc = densities(project[last_p]), densities(official[last_o]), densities(project[common_last])
    layer_rows = [[k, f"{dc[k]:.4f}", f"{do[k]:.4f}", f"{dp[k]:.4f}"] for k in do]
    print()
    print(
        markdown_table(
            [
                "layer",
                f"sparsetrain @ {common_last}",
                f"official @ {last_o} (its last)",
                f"sparsetrain @ {last_p} (its last)",
            ],
            layer_rows,
        )
    )
    if a.out:
        payload = {
            "args": vars(a),
            "step_check": check,
            "events": rows,
            "layers": {"sparsetrain_common": dc, "official_last": do, "sparsetrain_last": dp},
            "last_steps": {"sparsetrain": last_p, "official": last_o, "common": common_last},
        }
        Path(a.out).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
