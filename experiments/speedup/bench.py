"""Inference latency and throughput of exported models against their dense originals.

For each model, channel-pruned variants at target FLOPs ratios (default 70 %, 50 %, 30 % of the dense FLOPs)
are made with the real pipeline: `Magnitude(granularity="channel", allocation="uniform")` masks (the channel
fraction bisected until the masks' FLOPs ratio hits the target), `finalize`, `export_network` (channels
physically removed by Torch-Pruning's dependency graph), `load_exported`. The ViT gets a 2:4 variant
(`granularity="nm"`), which `load_exported` turns into semi-structured Linear weights only on a CUDA device
that runs them (sm80+, float16/bfloat16). Weights are random (latency does not depend on training), and
each variant's outputs are checked against the masked model before it is timed.

Timing: rounds interleaved over the variants (dense, then each export, then the next round), each a median
over `--iters` forward passes after warm-up, under `torch.inference_mode`; the table shows the median over
rounds and the spread (min..max). A speedup whose spread overlaps the dense one's is "within noise".

    .venv/bin/python -m experiments.speedup.bench --out experiments/speedup/results_cpu.json   # the CPU preset
    .venv/bin/python -m experiments.speedup.bench --device cuda --dtype float16 --batches 1 256 \\
        --models resnet20 resnet56 resnet50 vit --compile --out experiments/speedup/results_gpu.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from experiments.common import machine, markdown_table, summarize, write_json
from sparsetrain.accounting import account, module_flops
from sparsetrain.export import export_network, load_exported
from sparsetrain.models import build_model
from sparsetrain.pruners import Magnitude
from sparsetrain.semi_structured import Target

# name: (source, model name, in_chans, image size, classes)
MODELS = {
    "resnet20": ("builtin", "resnet20", 1, 28, 10),
    "resnet56": ("builtin", "resnet56", 1, 28, 10),
    "resnet50": ("timm", "resnet50", 3, 224, 1000),
    "vit": ("timm", "vit_tiny_patch16_224", 3, 224, 1000),
}


def arch_of(key: str) -> dict[str, Any]:
    source, name, chans, size, classes = MODELS[key]
    return {"source": source, "name": name, "in_chans": chans, "num_classes": classes, "image_size": size, "kwargs": {}}


def build(arch: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    a = {k: v for k, v in arch.items() if k != "kwargs"}
    return build_model(**a, **arch["kwargs"]).eval()


def channel_pruned(arch: dict[str, Any], target: float) -> tuple[torch.nn.Module, float, float]:
    """A finalized network whose channel masks keep `target` of the dense FLOPs; returns it, the channel fraction
    removed and the FLOPs ratio reached."""
    model = build(arch)
    example = torch.zeros(1, arch["in_chans"], arch["image_size"], arch["image_size"])
    pruner = Magnitude(sparsity=0.5, granularity="channel", allocation="uniform", begin=0.0)
    pruner.attach(model, 1, example)
    flops = module_flops(model, example)

    def ratio(s: float) -> float:
        for fqn, mask in pruner.masks.masks.items():
            pruner.masks.set(fqn, torch.ones_like(mask))
        pruner.prune_to(s)
        acc = account(model, flops, pruner.mask_dict(), pruner.targets)
        return acc["flops_sparse"] / acc["flops_dense"]

    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ratio(mid) > target else (lo, mid)
    reached = ratio(hi)
    pruner.masks.apply_to_weights()
    pruner.finalize()
    return model, hi, reached


def two_four(arch: dict[str, Any]) -> torch.nn.Module:
    model = build(arch)
    example = torch.zeros(1, arch["in_chans"], arch["image_size"], arch["image_size"])
    pruner = Magnitude(granularity="nm", n=2, m=4, begin=0.0)
    pruner.attach(model, 1, example)
    pruner.prune_to(0.5)
    pruner.masks.apply_to_weights()
    pruner.finalize()
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def latency(model: torch.nn.Module, x: torch.Tensor, iters: int, warmup: int = 1) -> float:
    """Median seconds of one forward pass."""
    for _ in range(warmup):
        model(x)
    sync(x.device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        model(x)
        sync(x.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def variants(key: str, targets: list[float], device: torch.device, dtype: torch.dtype, workdir: Path) -> list[dict]:
    """Dense and exported variants of one model, each loaded the way a user loads it, outputs checked."""
    arch = arch_of(key)
    shape = (arch["in_chans"], arch["image_size"], arch["image_size"])
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    dense = build(arch)
    flops_dense = module_flops(dense, torch.zeros(1, *shape))[0]
    out = [{"variant": "dense", "model": dense, "flops": flops_dense, "note": ""}]
    made = [(f"channel {t:.0%} FLOPs", *channel_pruned(arch, t)) for t in targets] if key != "vit" else []
    if key == "vit":
        made.append(("2:4", two_four(arch), None, None))
    for name, masked, removed, _ in made:
        with torch.inference_mode():
            reference = masked.eval()(x)
        directory = workdir / f"{key}-{name.split()[0]}-{len(out)}"
        spec = export_network(masked, directory, input_shape=shape, arch=arch, target=Target.of(device, dtype))
        exported = load_exported(directory)
        with torch.inference_mode():
            diff = float((exported(x) - reference).abs().max())
        loaded = load_exported(directory, device=device, dtype=dtype)  # 2:4 turns semi-structured here if it can
        decisions = sorted(set(spec["semi_structured"]["layers"].values()))
        note = f"{removed:.0%} channels removed" if removed is not None else "; ".join(decisions)
        out.append(
            {
                "variant": name,
                "model": loaded,
                "flops": spec["flops"],
                "params": spec["params"],
                "diff": diff,
                "note": note,
            }
        )
    dense.to(device=device, dtype=dtype)
    out[0]["params"] = sum(p.numel() for p in dense.parameters())
    out[0]["diff"] = 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "resnet50", "vit"], choices=MODELS)
    parser.add_argument("--flops", nargs="+", type=float, default=[0.7, 0.5, 0.3], help="target FLOPs ratios")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    parser.add_argument(
        "--cpu-batch-cap",
        nargs="*",
        default=["resnet56=64", "resnet50=8", "vit=8"],
        help="MODEL=N: largest batch timed for MODEL on the CPU (a shared 2-core machine); ignored on CUDA",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--out", type=Path, default=Path("experiments/speedup/results_cpu.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    caps = {k: int(v) for k, v in (item.split("=") for item in args.cpu_batch_cap)} if device.type == "cpu" else {}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            models = variants(key, args.flops, device, dtype, Path(tmp))
            kinds = [(m, False) for m in models] + ([(m, True) for m in models] if args.compile else [])
            compiled = {id(m): torch.compile(m["model"]) for m, c in kinds if c}
            for batch in sorted({min(b, caps.get(key, b)) for b in args.batches}):
                arch = arch_of(key)
                x = torch.randn(
                    batch, arch["in_chans"], arch["image_size"], arch["image_size"], device=device, dtype=dtype
                )
                samples: dict[tuple[int, bool], list[float]] = {(id(m), c): [] for m, c in kinds}
                failed: dict[tuple[int, bool], str] = {}
                for _ in range(args.rounds):  # interleaved: every variant once per round
                    for m, c in kinds:
                        if (id(m), c) in failed:
                            continue
                        net = compiled[id(m)] if c else m["model"]
                        try:
                            samples[(id(m), c)].append(latency(net, x, args.iters))
                        except Exception as e:  # e.g. torch.compile of a semi-structured weight: a row, not a crash
                            failed[(id(m), c)] = f"{type(e).__name__}: {str(e).strip()[:200]}"
                for m, c in kinds:
                    dense_s = samples[(id(models[0]), c)]
                    s = samples[(id(m), c)]
                    if (id(m), c) in failed or not dense_s:
                        why = failed.get((id(m), c), "the dense model of this mode failed")
                        rows.append(
                            {"model": key, "variant": m["variant"], "compiled": c, "batch": batch, "error": why}
                        )
                        print(
                            f"{key:9s} {m['variant']:18s} {'compiled' if c else 'eager':8s} b{batch:<4d} FAILED {why}"
                        )
                        continue
                    speedup = statistics.median(dense_s) / statistics.median(s)
                    overlap = min(s) <= max(dense_s) and min(dense_s) <= max(s)
                    rows.append(
                        {
                            "model": key,
                            "variant": m["variant"],
                            "compiled": c,
                            "batch": batch,
                            "flops_ratio": m["flops"] / models[0]["flops"],
                            "params": m["params"],
                            "max_abs_diff": m["diff"],
                            "latency_ms": {k: v * 1e3 if k != "n" else v for k, v in summarize(s).items()},
                            "throughput_per_s": batch / statistics.median(s),
                            "speedup": speedup,
                            "within_noise": m["variant"] != "dense" and overlap,
                            "note": m["note"],
                        }
                    )
                    r = rows[-1]
                    print(
                        f"{key:9s} {r['variant']:18s} {'compiled' if c else 'eager':8s} b{batch:<4d} "
                        f"FLOPs {r['flops_ratio']:.2f} {r['latency_ms']['median']:9.2f} ms "
                        f"[{r['latency_ms']['min']:.2f}..{r['latency_ms']['max']:.2f}] x{speedup:.2f}"
                        f"{' (within noise)' if r['within_noise'] else ''} diff {r['max_abs_diff']:.1e}",
                        flush=True,
                    )
    payload = {
        "machine": machine(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
    }
    write_json(args.out, payload)
    table = markdown_table(
        ["model", "variant", "mode", "batch", "FLOPs", "params", "latency ms (min..max)", "items/s", "speedup"],
        [
            [
                r["model"],
                r["variant"],
                "compiled" if r["compiled"] else "eager",
                r["batch"],
                f"{r['flops_ratio']:.2f}",
                f"{r['params']:,}",
                f"{r['latency_ms']['median']:.2f} ({r['latency_ms']['min']:.2f}..{r['latency_ms']['max']:.2f})",
                f"{r['throughput_per_s']:.0f}",
                f"{r['speedup']:.2f}x" + (" (within noise)" if r["within_noise"] else ""),
            ]
            for r in rows
            if "error" not in r
        ],
    )
    args.out.with_suffix(".md").write_text(table + "\n")
    plot(rows, args.out.with_suffix(".png"))
    print(table)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Speedup against the FLOPs ratio, one line per model and batch (the ideal 1/FLOPs dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["variant"] in ("dense", "2:4") or "error" in r:
            continue
        groups.setdefault((r["model"], r["batch"], r["compiled"]), []).append(r)
    for (model, batch, compiled), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["flops_ratio"])
        label = f"{model} b{batch}{' compiled' if compiled else ''}"
        ax.plot([r["flops_ratio"] for r in rs], [r["speedup"] for r in rs], marker="o", label=label)
    grid = [0.25 + i * 0.05 for i in range(16)]
    ax.plot(grid, [1 / g for g in grid], "k--", linewidth=1, label="ideal 1/FLOPs")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("FLOPs of the exported model / dense")
    ax.set_ylabel("speedup over dense (median)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
