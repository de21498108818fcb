"""Dense training-step time of the family study's models against ResNet-20 at 28 px, measured interleaved.

What a study of another model costs, as a ratio to the ResNet-20 runs whose wall time the studies record: one
SGD (Nesterov) step, forward, backward and update, batch 128, 1-channel input as Fashion-MNIST's, on fixed random
batches; the models alternate round by round, and each ratio is the median over rounds with its spread.

    .venv/bin/python -m experiments.studies.step_time              # -> experiments/studies/step_time_cpu.json
    .venv/bin/python -m experiments.studies.step_time --steps 1 --rounds 1 --out "$(mktemp -d)/t.json"   # smoke
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from experiments.common import machine, markdown_table, summarize, write_json
from sparsetrain.models import build_model

MODELS = {  # name -> (source, model name, image size, kwargs); the first is the reference
    "resnet20@28": ("builtin", "resnet20", 28, {}),
    "resnet18@32": ("timm", "resnet18", 32, {}),
    "vit_tiny_p4@32": ("timm", "vit_tiny_patch16_224", 32, {"patch_size": 4}),
}


def step_time(key: str, batch: int, steps: int, warmup: int) -> float:
    """Mean seconds per optimizer step after `warmup` steps."""
    source, name, size, kwargs = MODELS[key]
    torch.manual_seed(0)
    net = build_model(source, name, in_chans=1, num_classes=10, image_size=size, **kwargs)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch, 1, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g)
    start = time.perf_counter()
    for step in range(steps + warmup):
        if step == warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model and round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--note", default="", help="what else ran on the machine, kept in the JSON")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "step_time_cpu.json")
    args = parser.parse_args(argv)
    ref = next(iter(MODELS))
    models = [ref, *(m for m in args.models if m != ref)]
    times: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(args.rounds):
        for m in models:
            times[m].append(step_time(m, args.batch, args.steps, args.warmup))
    results, rows = {}, []
    for m in models:
        ratio = summarize([t / r for t, r in zip(times[m], times[ref], strict=True)])
        results[m] = {"step_ms": summarize([t * 1e3 for t in times[m]]), "ratio": ratio}
        rows.append([m, f"{results[m]['step_ms']['median']:.0f}", f"{ratio['median']:.2f}",
                     f"{ratio['min']:.2f}..{ratio['max']:.2f}"])  # fmt: skip
    shown = {k: str(v) for k, v in vars(args).items() if k != "out"}  # no machine's absolute path in the file
    write_json(args.out, {"machine": machine(), "args": shown, "results": results})
    print(markdown_table(["model", "step ms (median)", f"× {ref}", "spread"], rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
