"""Per-step overhead of sparsetrain inside a real Lightning `Trainer`, the way a user pays it.

`bench.py` drives the pruner protocol from a hand-written loop; this benchmark instead runs
`Trainer.fit` with `SparsityCallback(pruner)` and compares it with the same Trainer without any callback
(`dense`) and with Lightning's own `ModelPruning` (`hooks`: torch.nn.utils.prune forward-pre hooks that
recompute `weight = weight_orig * weight_mask` in every forward). Lightning's own per-step work (hooks,
logging `train/loss`, the LR scheduler, bf16 autocast) is in every variant, so the ratios are what a
user's step costs more with the callback.

Every fit is fresh (same seed, same random batches held on the device, no disk I/O) and times each
optimizer step from `on_train_batch_start` to `on_train_batch_end` (synchronising CUDA at both ends), after
`--warmup-steps` steps. Sparsity is 0.9; update events fall on every step that is a multiple of
`--update-every` (50): GMP prunes, GraNet prunes and regrows, PDP refreshes its thresholds there, all
inside the measured window. Two figures per fit:
  - step median: the median over the steady steps (measured steps that are not a multiple of
    `--update-every`, excluded in every variant alike), the per-step cost;
  - mean including events: the mean over all measured steps, the update events included at their
    configured rate (the issue's "PDP x1.38 counting its threshold refreshes").
Variants are interleaved: each round runs every variant's fit once, in an order shuffled per round by a
seeded RNG. A variant's figure is the median of its per-round values, with the spread (min..max) over
rounds; its ratio is the median of per-round ratios to dense of the same round. A difference inside the
spread is "within noise".

Compiled rows (`*_compiled`, not in the default list): the same fit with `ClassificationModule(compile=True)`
(`model.compile=true`; `--compile-backend`, `--compile-mode`), compiled afresh inside the warm-up steps of each fit;
their ratios are also given to compiled dense, which their verdicts use, and each fit records the graphs it
compiled (`state_at_end.compiled_graphs`: 1, no recompile at mask events).

    .venv/bin/python -m experiments.overhead.lightning_loop --model resnet20 --batch 8
    .venv/bin/python -m experiments.overhead.lightning_loop --model vit --batch 128 --device cuda --precision bf16-mixed
    .venv/bin/python -m experiments.overhead.lightning_loop --variants dense,pdp,dense_compiled,pdp_compiled
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch._dynamo
from pytorch_lightning.callbacks import ModelPruning
from torch._dynamo.utils import counters
from torch.nn.utils.prune import BasePruningMethod
from typing_extensions import override

from experiments.common import machine, markdown_table, write_json
from sparsetrain.callback import SparsityCallback
from sparsetrain.models import build_model
from sparsetrain.module import ClassificationModule
from sparsetrain.pruners import Pruner, list_pruners
from sparsetrain.targets import select_targets

SPARSITY = 0.9
NUM_CLASSES = 10
LAPP_FLOPS = 0.5  # LAPP's budget in both of its variants (the pruning phase, and the slimmed network)
# The sparsetrain variants: registry key (`sparsetrain.pruners.list_pruners()`, = `conf/pruner/<key>.yaml`) and
# keywords; any other keyword is the class's default. END and EVERY are filled per run with the last pruning event
# (a fraction of all steps) and `--update-every`, so every event falls on that grid from step 0 (inside the
# warm-up: the measured steps run with the masks in place). GMP and GraNet prune (GraNet also regrows) up to END;
# PDP refreshes its thresholds every EVERY steps and stays soft for the whole fit; BiP is bi-level from step 0 to
# the end (a score step and a projection every step). LAPP at half the dense FLOPs: `lapp` stays in its pruning
# phase (bypasses, straight-through masks, the FLOPs term, a threshold step every step), `lapp_slim` is slimmed
# before the first step (every measured step runs the smaller network).
END, EVERY = "<end>", "<every>"
PRUNERS: dict[str, tuple[str, dict[str, Any]]] = {
    "magnitude": ("magnitude", {"sparsity": SPARSITY, "begin": 0.0}),
    "gmp": ("gmp", {"sparsity": SPARSITY, "begin": 0.0, "end": END, "update_every": EVERY}),
    "granet": ("granet", {"sparsity": SPARSITY, "begin": 0.0, "end": END, "regrow_end": END, "update_every": EVERY}),
    "pdp": ("pdp", {"sparsity": SPARSITY, "warmup": 0.0, "end": END, "finetune": 0.0, "threshold_every": EVERY}),
    "bip": ("bip", {"sparsity": SPARSITY, "warmup": 0.0, "finetune": 0.0}),
    "lapp": ("lapp", {"max_flops_ratio": LAPP_FLOPS, "begin": 0.0, "end": 1.0, "update_every": EVERY}),
    "lapp_slim": ("lapp", {"max_flops_ratio": LAPP_FLOPS, "begin": 0.0, "end": 0.0, "update_every": EVERY}),
}
# Compiled rows: the same fit with `ClassificationModule(compile=True)` (`model.compile=true`), for dense and a few
# methods: the hard masks (magnitude, GMP's events) and PDP's soft mask, which the compiler fuses into the forward.
# Not in the default list (inductor compiles for about a minute per fit on a CPU): `--variants ...,pdp_compiled`.
COMPILED_SUFFIX = "_compiled"
COMPILED = ("dense_compiled", "magnitude_compiled", "gmp_compiled", "pdp_compiled")
EAGER_VARIANTS = ("dense", "hooks", *PRUNERS)
VARIANTS = (*EAGER_VARIANTS, *COMPILED)
# Issue 11's targets (× dense): hard masks on the GPU at batch 128/512, and the CPU proxy at batch 8; BiP's
# (issue 14) is 2× on both (a score step and a top-k projection every step).
TARGETS = {
    "cuda": {"magnitude": 1.03, "gmp": 1.03, "granet": 1.03, "pdp": 1.10, "bip": 2.0},
    "cpu": {"magnitude": 1.05, "gmp": 1.05, "granet": 1.05, "pdp": 1.15, "bip": 2.0},
}
# The recipe of the accuracy protocol (experiments/README.md), so the optimizer step is the one users run.
OPTIM = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine"}


@dataclass(frozen=True)
class ModelSpec:
    """How `build_model` makes a benchmarked net; the same nets and sizes as `bench.py`, so figures compare."""

    source: str
    name: str
    in_chans: int
    image_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)


MODELS = {
    "resnet20": ModelSpec("builtin", "resnet20", 1, 28),
    # 65 tokens, every targeted weight in a Linear: bench.py's "vit_tiny_p4@32".
    "vit": ModelSpec("timm", "vit_tiny_patch16_224", 3, 32, {"patch_size": 4}),
}


@dataclass(frozen=True)
class Config:
    """Everything a run depends on (written to the JSON)."""

    model: str
    batch: int
    steps: int
    warmup_steps: int
    rounds: int
    device: str
    precision: str
    variants: tuple[str, ...]
    update_every: int
    threads: int | None
    sync_debug: bool
    seed: int
    compile_backend: str = "inductor"
    compile_mode: str | None = None

    @property
    def total_steps(self) -> int:
        """Optimizer steps of one fit (`max_steps`)."""
        return self.warmup_steps + self.steps

    @property
    def end_step(self) -> int:
        """Last pruning event: the last multiple of `update_every` in the fit, so every event is on that grid."""
        return (self.total_steps - 1) // self.update_every * self.update_every

    @property
    def end_fraction(self) -> float:
        """`end_step` as the fraction of all optimizer steps that the pruners' `end` keys take."""
        return self.end_step / self.total_steps

    def is_event_step(self, step: int) -> bool:
        """Steps where a pruner may update masks or thresholds; excluded from every variant's step median."""
        return step % self.update_every == 0


# ----------------------------------------------------------------------------------------------- variants
def make_pruner(variant: str, cfg: Config) -> Pruner:
    """The sparsetrain pruner of a variant: its registry class with its `PRUNERS` keywords, END and EVERY filled."""
    key, keywords = PRUNERS[variant]
    run = {END: cfg.end_fraction, EVERY: cfg.update_every}
    return list_pruners()[key](**{k: run.get(v, v) if isinstance(v, str) else v for k, v in keywords.items()})


class PruneAtTrainStart(ModelPruning):
    """Lightning's `ModelPruning`, pruned once when training starts instead of at the first epoch's end.

    Stock `ModelPruning` prunes in `on_train_epoch_end`, so a one-epoch fit would measure no hooks at all.
    Pruning in `on_train_start` installs the torch.nn.utils.prune forward-pre hooks before the first step,
    so they run in every measured step. `apply_pruning=False` keeps the epoch-end call from pruning again.
    """

    def __init__(self, layers: list[tuple[torch.nn.Module, str]]) -> None:
        super().__init__(
            "l1_unstructured",
            parameters_to_prune=layers,
            use_global_unstructured=True,
            amount=SPARSITY,
            apply_pruning=False,
            use_lottery_ticket_hypothesis=False,
            verbose=0,
        )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply_pruning(self.amount)


def base_variant(variant: str) -> str:
    """`pdp` for `pdp_compiled`: the variant a compiled row compiles."""
    return variant.removesuffix(COMPILED_SUFFIX)


def variant_callbacks(variant: str, cfg: Config, net: torch.nn.Module) -> tuple[list[pl.Callback], Pruner | None]:
    """The callbacks a user adds for this variant (none for dense) and its pruner; the same layers in every one."""
    variant = base_variant(variant)
    if variant == "dense":
        return [], None
    if variant == "hooks":
        return [PruneAtTrainStart([(m, "weight") for m in select_targets(net).values()])], None
    pruner = make_pruner(variant, cfg)
    return [SparsityCallback(pruner)], pruner


# ----------------------------------------------------------------------------------------------- timing
class StepTimer(pl.Callback):
    """Wall time of each optimizer step, from `on_train_batch_start` to `on_train_batch_end`.

    It must be the first callback so that its start hook runs before the pruner's (PDP refreshes its
    thresholds in `on_train_batch_start`). The window excludes fetching the batch, which is identical in
    every variant. With `sync_debug`, steady measured steps run under `torch.cuda.set_sync_debug_mode("error")`,
    so any host-device synchronisation on the per-step path raises; the mode is set after this hook's
    own `torch.cuda.synchronize()` and cleared before the closing one.
    """

    def __init__(self, cfg: Config, sync_debug: bool) -> None:
        self.cfg = cfg
        self.cuda = cfg.device == "cuda"
        self.sync_debug = sync_debug and self.cuda
        self.steps: list[int] = []
        self.seconds: list[float] = []
        self._start = 0.0
        self._debugging = False

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._sync()
        self._start = time.perf_counter()
        step = trainer.global_step
        if self.sync_debug and step >= self.cfg.warmup_steps and not self.cfg.is_event_step(step):
            torch.cuda.set_sync_debug_mode("error")
            self._debugging = True

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._debugging:
            torch.cuda.set_sync_debug_mode("default")
            self._debugging = False
        self._sync()
        elapsed = time.perf_counter() - self._start
        step = trainer.global_step - 1  # the optimizer step just taken
        if step >= self.cfg.warmup_steps:
            self.steps.append(step)
            self.seconds.append(elapsed)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._debugging:  # leave the process usable after a sync-debug error
            torch.cuda.set_sync_debug_mode("default")
            self._debugging = False


class WindowProbe(pl.Callback):
    """After the last step, records that the variant's mechanism was active through the measured window.

    A benchmark whose hooks were never installed, or whose masks were still dense, would report a flattering
    ratio; the JSON keeps the evidence. It runs after the timer's end hook, so it is never timed.
    """

    def __init__(self, cfg: Config, pruner: Pruner | None) -> None:
        self.cfg = cfg
        self.pruner = pruner
        self.state: dict[str, Any] = {}

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self.cfg.total_steps:
            return
        hooked = [
            m
            for m in pl_module.modules()
            if any(isinstance(h, BasePruningMethod) for h in m._forward_pre_hooks.values())
        ]
        self.state = {"prune_hook_modules": len(hooked)}
        if hooked:
            zeros = sum(int((m.weight_mask == 0).sum()) for m in hooked)
            self.state["hook_mask_sparsity"] = zeros / sum(m.weight_mask.numel() for m in hooked)
        if getattr(pl_module, "compile_enabled", False):  # compiled rows: the graphs this fit compiled
            self.state["compiled_graphs"] = counters["stats"]["unique_graphs"]
        if self.pruner is not None:
            self.state["pruner_events"] = self.pruner.events
            self.state["mask_sparsity"] = self.pruner.global_sparsity()
            self.state["weights_masked"] = self.pruner.masks_weights  # False for PDP's soft phase


class DeviceBatches:
    """A fixed number of batches cycled from a few random ones already on the device (no I/O, no workers).

    Not a list: Lightning would treat a list as a collection of loaders. `__len__` makes the epoch length
    (and so `estimated_stepping_batches`) finite and known.
    """

    def __init__(self, cfg: Config, spec: ModelSpec, distinct: int = 4) -> None:
        g = torch.Generator().manual_seed(cfg.seed + 1)
        shape = (cfg.batch, spec.in_chans, spec.image_size, spec.image_size)
        self.batches = [
            (
                torch.randn(shape, generator=g).to(cfg.device),
                torch.randint(0, NUM_CLASSES, (cfg.batch,), generator=g).to(cfg.device),
            )
            for _ in range(distinct)
        ]
        self.length = cfg.total_steps

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self.batches[i % len(self.batches)] for i in range(self.length))


def make_trainer(cfg: Config, callbacks: list[pl.Callback]) -> pl.Trainer:
    """A Trainer with everything that is not the training step turned off; cudnn autotuning as `trainer=gpu`."""
    return pl.Trainer(
        accelerator="gpu" if cfg.device == "cuda" else "cpu",
        devices=1,
        precision=cfg.precision,
        max_steps=cfg.total_steps,
        max_epochs=1,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        benchmark=cfg.device == "cuda",
    )


def run_fit(variant: str, cfg: Config) -> dict[str, Any]:
    """One fresh fit of a variant; its measured steps and the two per-fit figures (ms)."""
    spec = MODELS[cfg.model]
    torch.manual_seed(cfg.seed)
    net = build_model(
        spec.source,
        spec.name,
        in_chans=spec.in_chans,
        num_classes=NUM_CLASSES,
        image_size=spec.image_size,
        **spec.kwargs,
    )
    compiled = variant.endswith(COMPILED_SUFFIX)
    if compiled:  # every compiled fit compiles afresh, inside its warm-up steps, and counts its own graphs
        torch._dynamo.reset()
        counters.clear()
    options = {"backend": cfg.compile_backend, **({"mode": cfg.compile_mode} if cfg.compile_mode else {})}
    module = ClassificationModule(
        net,
        NUM_CLASSES,
        optim=OPTIM,
        example_input_shape=(spec.in_chans, spec.image_size, spec.image_size),
        compile=compiled,
        compile_options=options if compiled else None,
    )
    timer = StepTimer(cfg, sync_debug=cfg.sync_debug and base_variant(variant) in PRUNERS)
    callbacks, pruner = variant_callbacks(variant, cfg, net)
    probe = WindowProbe(cfg, pruner)
    trainer = make_trainer(cfg, [timer, *callbacks, probe])
    trainer.fit(module, train_dataloaders=DeviceBatches(cfg, spec))
    return {**fit_figures(cfg, timer.steps, timer.seconds), "state_at_end": probe.state}


def fit_figures(cfg: Config, steps: list[int], seconds: list[float]) -> dict[str, Any]:
    """Step median over the steady steps and mean over all measured steps, with the raw per-step times."""
    ms = [s * 1e3 for s in seconds]
    steady = [t for step, t in zip(steps, ms, strict=True) if not cfg.is_event_step(step)]
    if not ms:
        raise RuntimeError("no measured step: --steps must be at least 1")
    return {
        "step_median_ms": statistics.median(steady) if steady else float("nan"),
        "mean_ms": statistics.fmean(ms),
        "event_steps": [step for step in steps if cfg.is_event_step(step)],
        "steps": steps,
        "step_ms": ms,
    }


# ----------------------------------------------------------------------------------------------- summary
def spread(values: list[float]) -> dict[str, float]:
    """Median and min..max of per-round values."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize_variant(variant: str, rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per-round figures of one variant and their ratios to dense of the same round, over rounds; a compiled
    row also to compiled dense (`*_ratio_compiled`) when that was measured."""
    out: dict[str, Any] = {}
    compiled_dense = "dense" + COMPILED_SUFFIX
    for key in ("step_median_ms", "mean_ms"):
        values = [r[variant][key] for r in rounds]
        ratios = [r[variant][key] / r["dense"][key] for r in rounds]
        out[key] = spread(values)
        out[key.replace("_ms", "_ratio")] = spread(ratios)
        if variant.endswith(COMPILED_SUFFIX) and compiled_dense in rounds[0]:
            ratios = [r[variant][key] / r[compiled_dense][key] for r in rounds]
            out[key.replace("_ms", "_ratio_compiled")] = spread(ratios)
    return out


def verdict(ratio: dict[str, float], target: float | None, rounds: int) -> str:
    """pass/miss on the median ratio; "within noise" when the target lies inside the spread over rounds."""
    if target is None:
        return "—"
    result = "pass" if ratio["median"] <= target else "miss"
    if rounds > 1 and ratio["min"] <= target < ratio["max"]:
        result += " (within noise)"
    return result


def _ratio(r: dict[str, float] | None) -> str:
    return "—" if r is None else f"{r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f})"


def table_rows(cfg: Config, summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per variant: both figures, their spreads, ratios to dense (compiled rows: also to compiled dense,
    which their verdicts use), the issue's target and verdicts."""
    rows = []
    for variant in cfg.variants:
        s = summary[variant]
        target = TARGETS[cfg.device].get(base_variant(variant))
        step, mean = s["step_median_ms"], s["mean_ms"]
        compiled_r = s.get("step_median_ratio_compiled")
        step_r = compiled_r or s["step_median_ratio"]
        mean_r = s.get("mean_ratio_compiled") or s["mean_ratio"]
        rows.append(
            [
                variant,
                f"{step['median']:.2f}",
                f"{step['min']:.2f}–{step['max']:.2f}",
                _ratio(s["step_median_ratio"]),
                _ratio(compiled_r),
                f"{mean['median']:.2f}",
                _ratio(mean_r),
                "—" if target is None else f"≤ {target:.2f}",
                verdict(step_r, target, cfg.rounds),
                verdict(mean_r, target, cfg.rounds),
            ]
        )
    return rows


TABLE_HEADER = [
    "variant",
    "ms/step (median)",
    "spread (ms)",
    "× dense (spread)",
    "× dense compiled (spread)",
    "mean incl. events (ms)",
    "× dense incl. events (spread; compiled rows: × dense compiled)",
    "target",
    "step",
    "incl. events",
]


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> tuple[Config, Path]:
    """The command line as a `Config` and the JSON path; dense is always measured (every ratio is to it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150, help="measured optimizer steps per fit")
    parser.add_argument("--warmup-steps", type=int, default=20, help="unmeasured optimizer steps at the start of a fit")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (every variant once per round)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true")
    parser.add_argument("--variants", default=",".join(EAGER_VARIANTS), help=f"comma list out of {','.join(VARIANTS)}")
    parser.add_argument("--update-every", type=int, default=50, help="steps between update events (all pruners)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="model, data and round-order seed")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the *_compiled rows")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode of the *_compiled rows")
    parser.add_argument(
        "--sync-debug",
        action="store_true",
        help='CUDA only: run the steady steps of sparsetrain variants under set_sync_debug_mode("error")',
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default: lightning_<model>_b<batch>_<device>.json here)"
    )
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.sync_debug and args.device != "cuda":
        parser.error("--sync-debug needs --device cuda")
    if min(args.batch, args.steps, args.rounds, args.update_every) < 1 or args.warmup_steps < 0:
        parser.error("--batch, --steps, --rounds and --update-every must be >= 1, --warmup-steps >= 0")
    options = vars(args)
    out = options.pop("out")
    cfg = Config(**{**options, "variants": tuple(v for v in VARIANTS if v == "dense" or v in variants)})
    out = out or Path(__file__).parent / f"lightning_{cfg.model}_b{cfg.batch}_{cfg.device}.json"
    return cfg, out


def quiet_lightning() -> None:
    """Lightning's per-fit banners (GPU available, ...) and sparsetrain's attach line would bury the table."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def payload(cfg: Config, rounds: list[dict[str, Any]], summary: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON: what it ran on, the configuration, every round's raw step times, and the summary."""
    return {
        "machine": machine(),
        "config": {**asdict(cfg), "total_steps": cfg.total_steps, "end_step": cfg.end_step},
        "rounds": rounds,
        "summary": summary,
        "complete": summary is not None,
    }


def main(argv: list[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    quiet_lightning()
    rng = random.Random(cfg.seed)
    rounds: list[dict[str, Any]] = []
    for r in range(cfg.rounds):
        order = list(cfg.variants)
        rng.shuffle(order)
        fits = {}
        for variant in order:
            fits[variant] = run_fit(variant, cfg)
            print(
                f"round {r + 1}/{cfg.rounds} {variant:>9}: step median {fits[variant]['step_median_ms']:.2f} ms, "
                f"mean incl. events {fits[variant]['mean_ms']:.2f} ms",
                flush=True,
            )
        rounds.append({"order": order, "fits": fits})
        write_json(out, payload(cfg, rounds, None))  # a long run keeps its finished rounds
    per_round = [r["fits"] for r in rounds]
    summary = {v: summarize_variant(v, per_round) for v in cfg.variants}
    write_json(out, payload(cfg, rounds, summary))
    print(
        f"\n{cfg.model} batch {cfg.batch} {cfg.device} {cfg.precision}: {cfg.rounds} rounds of {cfg.steps} steps "
        f"after {cfg.warmup_steps}; events every {cfg.update_every} steps (last pruning event at step {cfg.end_step})"
    )
    print(markdown_table(TABLE_HEADER, table_rows(cfg, summary)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
