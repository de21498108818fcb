"""Dense training throughput: sparsetrain's Lightning pipeline vs a plain PyTorch loop.

Same model (ResNet-20), batch, optimizer, LR schedule and data (Fashion-MNIST held as tensors on the
device); both run for the same number of optimizer steps, interleaved round by round, and the first
`warmup` steps of each run are excluded. The framework run is the real thing: `ClassificationModule`, the
on-device data module, CSV logging, checkpointing and the LR monitor, as `train.py` uses them (no progress
bar, which only draws on a terminal).

    .venv/bin/python -m experiments.throughput.bench --steps 60 --rounds 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from experiments.common import machine, markdown_table, summarize, write_json
from sparsetrain.data import FashionMNISTDataModule
from sparsetrain.models import build_model
from sparsetrain.module import ClassificationModule
from sparsetrain.optim import build_optimizer, lr_factor, param_groups

OPTIM = {
    "name": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "no_decay_norm_bias": True,
    "schedule": "cosine",
}


class StepTimer(pl.Callback):
    """Wall time from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def framework_run(dm: FashionMNISTDataModule, steps: int, warmup: int, device: str) -> float:
    torch.manual_seed(0)
    net = build_model("builtin", "resnet20", in_chans=1, num_classes=10, image_size=28)
    module = ClassificationModule(net, 10, OPTIM, example_input_shape=(1, 28, 28))
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            max_steps=steps,
            accelerator=device,
            devices=1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=CSVLogger(tmp, name="csv"),
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[ModelCheckpoint(dirpath=tmp, save_last=True), LearningRateMonitor("step"), timer],
            log_every_n_steps=50,
            default_root_dir=tmp,
        )
        trainer.fit(module, datamodule=dm)
    return (steps - warmup) / (timer.end - timer.start)


def plain_run(dm: FashionMNISTDataModule, steps: int, warmup: int, device: str) -> float:
    torch.manual_seed(0)
    net = build_model("builtin", "resnet20", in_chans=1, num_classes=10, image_size=28).to(device)
    opt = build_optimizer(param_groups(net, 5e-4, True), "sgd", 0.1, 0.9, True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, "cosine"))
    x_all, y_all = dm.train_tensors()
    x_all, y_all = x_all.to(device), y_all.to(device)
    batch = dm.batch_size
    perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0)).to(device)
    net.train()
    start = None
    for step in range(steps):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        idx = perm[(step * batch) % (len(perm) - batch) :][:batch]
        x, y = x_all[idx], y_all[idx]
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = loss.detach()
    float(loss_value)
    if device == "cuda":
        torch.cuda.synchronize()
    return (steps - warmup) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results.json")
    args = parser.parse_args()
    dm = FashionMNISTDataModule(batch_size=args.batch, on_device=True)
    dm.prepare_data()
    dm.setup("fit")
    samples: dict[str, list[float]] = {"plain": [], "sparsetrain": []}
    for r in range(args.rounds):
        samples["plain"].append(plain_run(dm, args.steps, args.warmup, args.device))
        samples["sparsetrain"].append(framework_run(dm, args.steps, args.warmup, args.device))
        print(f"round {r}: plain {samples['plain'][-1]:.2f} it/s, sparsetrain {samples['sparsetrain'][-1]:.2f} it/s")
    ratios = [f / p for f, p in zip(samples["sparsetrain"], samples["plain"], strict=True)]
    result = {
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "steps_per_s": {k: summarize(v) for k, v in samples.items()},
        "ratio": summarize(ratios),
    }
    write_json(args.out, result)
    rows = [[k, f"{v['median']:.2f}", f"{v['min']:.2f}..{v['max']:.2f}"] for k, v in result["steps_per_s"].items()]
    rows.append(
        [
            "ratio sparsetrain/plain",
            f"{result['ratio']['median']:.3f}",
            f"{result['ratio']['min']:.3f}..{result['ratio']['max']:.3f}",
        ]
    )
    print(markdown_table(["variant", "median steps/s", "spread"], rows))


if __name__ == "__main__":
    main()
