"""IMP's rewinding, observed from outside the pruner: what a round end does to weights, optimizer and LR.

The run records, at the start of every optimizer step, the model's tensors, the optimizer's momentum and the
learning rate, independently of IMP's own snapshot. At a round end the step must start from θ_k (the values
recorded at `rewind_step` k) for `rewinding="weights"`, or from the trained values for `rewinding="lr"`,
masked by the new masks either way; the optimizer state must be the one recorded at k (zero where pruned),
and the LR schedule must replay from k with a real (chainable) scheduler.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from sparsetrain import SparsityCallback
from sparsetrain.pruners import IMP
from tests.helpers.nets import MLP, Net, batches, loader

ROUND = 10  # optimizer steps of the first round (the configured budget)
K = 3  # rewind_step
SCHEDULERS = {
    "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=ROUND),
    "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
}


def state(model: nn.Module, optimizer: torch.optim.Optimizer, pruner: IMP) -> dict:
    """Copies of what a step starts from: every model tensor, the momentum buffers, the LR, the masks."""
    params = dict(model.named_parameters())
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("_mask")},
        "momentum": {
            k: (
                optimizer.state[p]["momentum_buffer"].clone()
                if "momentum_buffer" in optimizer.state.get(p, {})
                else None
            )
            for k, p in params.items()
        },
        "lr": [g["lr"] for g in optimizer.param_groups],
        "masks": {k: v.clone() for k, v in pruner.mask_dict().items()},
    }


def run_imp(rewinding: str, scheduler: str, rewind_step: int = K) -> tuple[IMP, list[dict], list[dict]]:
    """IMP (2 rounds to 75 %) with SGD momentum and a real LR scheduler, driven as the callback drives it.

    Returns the pruner and, per optimizer step, the state before `before_forward` (what the previous step
    left) and after it (what this step starts from).
    """
    torch.manual_seed(0)
    model = MLP()
    pruner = IMP(sparsity=0.75, rounds=2, rewind_step=rewind_step, rewinding=rewinding)
    pruner.attach(model, ROUND, torch.zeros(1, 16))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = SCHEDULERS[scheduler](optimizer)
    pruner.on_fit_start(optimizer, [sched])
    data = batches(8, (16,))
    before, after = [], []
    for step in range(pruner.fit_steps(ROUND)):
        before.append(state(model, optimizer, pruner))
        pruner.before_forward(step)
        after.append(state(model, optimizer, pruner))
        x, y = data[step % len(data)]
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        pruner.before_optimizer_step(step, optimizer)
        optimizer.step()
        pruner.after_optimizer_step(step, optimizer)
        sched.step()
    return pruner, before, after


def round_ends(rewind_step: int = K) -> list[int]:
    return [ROUND, ROUND + (ROUND - rewind_step)]


def masked(value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return value if mask is None else value * mask


def assert_optimizer_and_lr_rewound(before, after, rewind_step: int = K) -> None:
    k = after[rewind_step]
    for end in round_ends(rewind_step):
        now = after[end]
        for name, momentum in k["momentum"].items():
            if momentum is None:  # rewound to before the first step: no momentum yet
                assert now["momentum"][name] is None, name
            else:
                assert torch.equal(now["momentum"][name], masked(momentum, now["masks"].get(name))), name
        assert now["lr"] == k["lr"]
        # the schedule replays from k: every step of the round uses the LR of the same step after k in round 0
        replayed = [s["lr"] for s in after[end : end + ROUND - rewind_step]]
        assert replayed == [s["lr"] for s in after[rewind_step:ROUND]]
        assert before[end]["lr"] != k["lr"]  # the schedule had moved on: the replay is observable


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_weight_rewinding_restarts_each_round_from_the_rewind_step(scheduler):
    pruner, before, after = run_imp("weights", scheduler)
    theta_k = after[K]["tensors"]
    for r, end in enumerate(round_ends(), start=1):
        now = after[end]
        assert pruner.history[r - 1]["end_step"] == end
        for name, value in now["tensors"].items():
            expected = masked(theta_k[name], now["masks"].get(name))
            assert torch.equal(value, expected), f"round {r}: {name} is not θ_k (masked)"
        assert not torch.equal(before[end]["tensors"]["fc1.weight"], theta_k["fc1.weight"])  # it had trained
        density = sum(int(now["masks"][f].sum()) for f in pruner.weights) / sum(
            now["masks"][f].numel() for f in pruner.weights
        )
        assert density == pytest.approx(1 - (0.5 if r == 1 else 0.75), abs=1e-3)
    assert_optimizer_and_lr_rewound(before, after)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_lr_rewinding_keeps_the_trained_weights_and_replays_schedule_and_optimizer(scheduler):
    _, before, after = run_imp("lr", scheduler)
    theta_k = after[K]["tensors"]
    for end in round_ends():
        now, trained = after[end], before[end]["tensors"]
        for name, value in now["tensors"].items():
            assert torch.equal(value, masked(trained[name], now["masks"].get(name))), name
        survivors = now["masks"]["fc1.weight"] != 0
        assert not torch.equal(now["tensors"]["fc1.weight"][survivors], theta_k["fc1.weight"][survivors])
    assert_optimizer_and_lr_rewound(before, after)


@pytest.mark.parametrize("rewinding", ["weights", "lr"])
def test_rewinding_to_step_zero_restores_the_initial_weights_and_an_empty_optimizer_state(rewinding):
    _, before, after = run_imp(rewinding, "cosine", rewind_step=0)
    init = after[0]["tensors"]
    for end in round_ends(0):
        now = after[end]
        assert all(m is None for m in now["momentum"].values())  # SGD starts its momentum afresh
        source = init if rewinding == "weights" else before[end]["tensors"]
        for name, value in now["tensors"].items():
            assert torch.equal(value, masked(source[name], now["masks"].get(name))), name
    assert_optimizer_and_lr_rewound(before, after, rewind_step=0)


# ----------------------------------------------------------------------------------------- inside a Trainer
def _tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items() if not k.endswith("_mask")}


class Recorder(pl.Callback):
    """Listed after `SparsityCallback`: what each optimizer step starts from (after any rewind) and what the
    previous step left (after its re-masking), with the momentum, masks and the LR the step uses."""

    def __init__(self) -> None:
        self.start: dict[int, dict] = {}
        self.left: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        optimizer = trainer.optimizers[0]
        self.start[trainer.global_step] = {
            "tensors": _tensors(pl_module.net),
            "momentum": {
                k: optimizer.state[p]["momentum_buffer"].clone()
                for k, p in pl_module.net.named_parameters()
                if "momentum_buffer" in optimizer.state.get(p, {})
            },
            "masks": {k[: -len("_mask")]: v.clone() for k, v in pl_module.net.state_dict().items() if "_mask" in k},
        }

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.start[trainer.global_step]["lr"] = optimizer.param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.left[trainer.global_step] = _tensors(pl_module.net)  # global_step counts the step just taken


class Scheduled(pl.LightningModule):
    """The ResNetTiny module of the device-move tests with a step-wise cosine LR schedule."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net().net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=12)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@pytest.mark.parametrize("rewinding", ["weights", "lr"])
def test_the_callback_rewinds_weights_bn_statistics_optimizer_and_its_lr_scheduler(rewinding, trainer):
    torch.manual_seed(0)
    rewind, per_round = 2, 12  # 3 epochs of 4 batches, then 2 rounds of 10 steps
    recorder = Recorder()
    pruner = IMP(sparsity=0.75, rounds=2, rewind_step=rewind, rewinding=rewinding)
    fitted = trainer(max_epochs=3, callbacks=[SparsityCallback(pruner), recorder])
    fitted.fit(Scheduled(), train_dataloaders=loader())
    start = recorder.start
    assert fitted.global_step == per_round + 2 * (per_round - rewind) == len(start)
    k = start[rewind]
    for end in (per_round, 2 * per_round - rewind):
        now = start[end]
        assert now["masks"] and any(int((m == 0).sum()) for m in now["masks"].values())
        source = k["tensors"] if rewinding == "weights" else recorder.left[end]  # BN running statistics too
        other = recorder.left[end] if rewinding == "weights" else k["tensors"]
        for name, value in now["tensors"].items():
            assert torch.equal(value, masked(source[name], now["masks"].get(name))), name
        assert not torch.equal(source["bn2.running_mean"], other["bn2.running_mean"])  # the two differ
        for name, momentum in k["momentum"].items():
            assert torch.equal(now["momentum"][name], masked(momentum, now["masks"].get(name))), name
        replay = range(per_round - rewind)
        assert [start[end + j]["lr"] for j in replay] == [start[rewind + j]["lr"] for j in replay]
        assert start[end - 1]["lr"] != k["lr"]
