"""End to end through `sparsetrain.app.run`: results.json, resume, export, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

from sparsetrain.app import run
from sparsetrain.errors import one_line_error
from sparsetrain.models import build_model
from tests.helpers.runs import assert_same_export

KEYS = [
    "pruner",
    "model",
    "data",
    "seed",
    "test_acc",
    "sparsity",
    "params_total",
    "params_nonzero",
    "flops_dense",
    "flops_sparse",
    "train_time_s",
    "steps",
    "layers",
    "val_acc",
    "dense_test_acc",
    "pruner_config",
]


class StopAfterEpoch(pl.Callback):
    """Ends fit after a given epoch, as if the job had been killed there (last.ckpt is already written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class StartStep(pl.Callback):
    """Records the optimizer step at which training (re)starts."""

    start: int | None = None

    def on_train_start(self, trainer, pl_module):
        self.start = trainer.global_step


def _results(cfg) -> dict:
    return json.loads((Path(cfg.output_dir) / "results.json").read_text())


def test_dense_run_writes_results_with_every_key(compose):
    cfg = compose()
    val_acc = run(cfg)
    r = _results(cfg)
    assert all(k in r for k in KEYS)
    assert r["pruner"] is None and r["model"] == "lenet5" and r["data"] == "fake" and r["seed"] == 0
    assert 0.0 <= val_acc <= 1.0 and 0.0 <= r["test_acc"] <= 1.0 and r["val_acc"] == pytest.approx(val_acc)
    assert r["dense_test_acc"] is None  # no committed reference for lenet5 on fake data
    assert r["pruner_config"] is None and r["max_epochs"] == 2
    assert r["sparsity"] == 0.0 and r["params_nonzero"] == r["params_total"] > 0
    assert r["flops_sparse"] == r["flops_dense"] > 0
    assert r["steps"] == 2 * (86 // 16)  # 2 epochs of 86 training images (10 % held out) at batch 16, drop_last
    assert r["train_time_s"] > 0
    layer = r["layers"]["conv2"]
    assert layer["shape"] == [16, 6, 5, 5] and layer["density"] == 1.0 and layer["flops_dense"] > 0
    assert (Path(cfg.output_dir) / "csv" / "metrics.csv").exists()
    assert (Path(cfg.output_dir) / "checkpoints" / "last.ckpt").exists()


def test_sparse_run_reports_mask_sparsity_flops_and_exports_plain_weights(compose):
    cfg = compose("+pruner=gmp", "pruner.sparsity=0.8", "pruner.update_every=2")
    run(cfg)
    r = _results(cfg)
    assert r["pruner"] == "gmp"
    assert r["sparsity"] == pytest.approx(0.8, abs=1e-4)
    targeted = sum(torch.Size(v["shape"]).numel() for v in r["layers"].values())
    assert r["params_total"] - r["params_nonzero"] == round(0.8 * targeted)
    assert r["flops_sparse"] < r["flops_dense"]
    for layer in r["layers"].values():
        assert layer["flops_sparse"] == round(layer["flops_dense"] * layer["density"])
    state = load_file(str(Path(cfg.output_dir) / "export" / "model.safetensors"))
    plain = build_model("builtin", "lenet5", in_chans=1, num_classes=10, image_size=16)
    plain.load_state_dict(state, strict=True)  # finalized: no mask buffers, loads into the plain architecture
    conv2 = plain.conv2.weight
    assert torch.count_nonzero(conv2) == round(conv2.numel() * r["layers"]["conv2"]["density"])
    metrics = (Path(cfg.output_dir) / "csv" / "metrics.csv").read_text().splitlines()[0]
    for name in ("sparsity/global", "flops/ratio", "mask/churn", "sparsity/conv2", "train/loss", "val/acc"):
        assert name in metrics
    assert r["pruner_config"]["sparsity"] == 0.8 and r["pruner_config"]["update_every"] == 2


@pytest.mark.parametrize(
    ("pruner", "events"),
    [
        # 10 optimizer steps, end=0.5: prune at 0, 3, 5 (end); prune-and-regrow at 3, 6, 9 (3 shared)
        (["+pruner=granet", "pruner.update_every=3"], [0, 3, 5, 6, 9]),
        # warm-up to step 1, thresholds refreshed at 1, 3, 5, 7 (ramp to end=0.7), hardened at 8 (finetune=0.2)
        (["+pruner=pdp", "pruner.warmup=0.1", "pruner.end=0.7", "pruner.threshold_every=2"], [1, 3, 5, 7, 8]),
    ],
    ids=["granet", "pdp"],
)
def test_gradient_accumulation_counts_optimizer_steps(compose, pruner, events):
    """Two micro-batches per optimizer step: schedules, events and logs follow optimizer steps."""
    import csv

    accumulate = ["trainer.accumulate_grad_batches=2", "trainer.limit_train_batches=4", "trainer.max_epochs=5"]
    cfg = compose(*pruner, "pruner.sparsity=0.8", *accumulate)
    run(cfg)
    r = _results(cfg)
    assert r["steps"] == 5 * 4 // 2
    assert r["sparsity"] == pytest.approx(0.8, abs=1e-3)
    with open(Path(cfg.output_dir) / "csv" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("mask/churn")]
    assert [int(row["step"]) for row in rows] == events  # once per optimizer step, not per micro-batch


@pytest.mark.parametrize(
    "pruner",
    [
        ["+pruner=gmp", "pruner.sparsity=0.8", "pruner.update_every=1", "pruner.end=1.0"],
        ["+pruner=granet", "pruner.sparsity=0.8", "pruner.update_every=2", "pruner.end=0.8"],
        [
            "+pruner=pdp",
            "pruner.sparsity=0.8",
            "pruner.warmup=0.1",
            "pruner.end=0.9",
            "pruner.finetune=0.0",
            "pruner.threshold_every=2",
        ],
    ],
    ids=["gmp", "granet", "pdp"],
)
def test_kill_and_resume_mid_schedule_equals_uninterrupted(compose, pruner):
    common = ["trainer.deterministic=true", "trainer.max_epochs=3", "test=true", *pruner]
    full = compose(*common)
    run(full)
    first = compose(*common)
    run(first, callbacks=[StopAfterEpoch(0)])  # "killed" after the first epoch, mid-schedule
    ckpt = Path(first.output_dir) / "checkpoints" / "last.ckpt"
    killed_at = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    resumed, start = compose(*common, f"ckpt_path={ckpt}"), StartStep()
    run(resumed, callbacks=[start])
    assert 0 < killed_at == start.start  # really resumed mid-run, not retrained from step 0
    a, b = _results(full), _results(resumed)
    assert a["steps"] == b["steps"]
    assert a["test_acc"] == b["test_acc"]
    assert a["sparsity"] == b["sparsity"]
    assert_same_export(full.output_dir, resumed.output_dir, atol=1e-6)


def test_resuming_with_another_pruner_is_one_clear_line(compose):
    first = compose("+pruner=gmp", "pruner.sparsity=0.5", "trainer.max_epochs=1")
    run(first)
    ckpt = f"ckpt_path={Path(first.output_dir) / 'checkpoints' / 'last.ckpt'}"
    for overrides, message in [
        ([], r"written by a run with \+pruner=gmp, but this run has none"),
        (["+pruner=rigl"], r"written by a run with \+pruner=gmp, but this run has \+pruner=rigl"),
        (["ckpt_path=/nonexistent.ckpt"], "does not exist"),
    ]:
        with pytest.raises(ValueError if "ckpt_path=" not in str(overrides) else FileNotFoundError) as info:
            run(compose("trainer.max_epochs=2", ckpt, *overrides))
        assert __import__("re").search(message, one_line_error(info.value))


def test_update_events_are_logged_at_their_own_step(compose):
    """Events go straight to the loggers: not throttled by log_every_n_steps, never a stale value."""
    import csv

    cfg = compose("+pruner=granet", "pruner.sparsity=0.8", "pruner.update_every=3", "trainer.log_every_n_steps=50")
    run(cfg)
    with open(Path(cfg.output_dir) / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("mask/churn")]
    # 10 steps, end=0.5: prune events at 0, 3 and exactly at end (5); prune-and-regrow at 3, 6, 9
    assert [int(r["step"]) for r in rows] == [0, 3, 5, 6, 9]
    assert all(r["sparsity/global"] and r["flops/ratio"] for r in rows)


def test_imp_runs_all_rounds_in_one_fit(compose):
    cfg = compose(
        "+pruner=imp", "pruner.sparsity=0.75", "pruner.rounds=2", "pruner.rewind_step=2", "trainer.max_epochs=1"
    )
    run(cfg)
    r = _results(cfg)
    per_round = 86 // 16
    assert r["steps"] == per_round + 2 * (per_round - 2)
    assert [x["round"] for x in r["rounds"]] == [0, 1, 2]
    assert r["rounds"][0]["sparsity"] == 0.0
    assert r["rounds"][1]["sparsity"] == pytest.approx(0.5, abs=1e-3)  # 1 - (1 - 0.75) ** (1/2)
    assert r["rounds"][2]["sparsity"] == pytest.approx(0.75, abs=1e-3) == r["sparsity"]
    assert sum(x["steps"] for x in r["rounds"]) == r["steps"]


def test_imp_snapshots_hold_each_rounds_trained_ticket(compose):
    """`snapshot_every_n_steps` = a round keeps every round's network before the next round prunes it."""
    from sparsetrain.restore import finalized_network

    cfg = compose("+pruner=imp", "pruner.sparsity=0.75", "pruner.rounds=2", "trainer.max_epochs=1",
                  "snapshot_every_n_steps=5")  # fmt: skip
    run(cfg)
    r = _results(cfg)
    ckpts = Path(cfg.output_dir) / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step*.ckpt")) == ["step000005.ckpt", "step000010.ckpt", "step000015.ckpt"]
    walls = [x["wall_s"] for x in r["rounds"]]
    assert walls == sorted(walls) and walls[0] > 0
    for step, record in zip((5, 10, 15), r["rounds"], strict=True):
        network, *_ = finalized_network(ckpts / f"step{step:06d}.ckpt", cfg)
        weights = [m.weight for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        zeros = sum(int((w == 0).sum()) for w in weights[1:-1])  # keep_first_last: the targets
        assert zeros / sum(w.numel() for w in weights[1:-1]) == pytest.approx(record["sparsity"], abs=1e-3)
    exported, last = load_file(Path(cfg.output_dir) / "export" / "model.safetensors"), network.state_dict()
    assert exported.keys() == last.keys() and all(torch.equal(v, last[k]) for k, v in exported.items())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+pruner=gmp", "pruner.sparsity=1.5"], r"pruner.sparsity must be in \[0, 1\), got 1.5"),
        (["+pruner=gmp", "pruner.granularity=block"], "pruner.granularity must be one of unstructured, channel, nm"),
        (["optim.name=rmsprop"], "optim.name must be one of sgd, adamw"),
        (["optim.lr=-1"], "optim.lr must be > 0"),
        (["optim.lr=fast"], "invalid optim config"),
        (["optim.momentum=1.0"], r"optim.momentum must be in \[0, 1\), got 1.0"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay must be >= 0"),
        (["optim.warmup=1.5"], "optim.warmup is a fraction of all optimizer steps"),
        (["label_smoothing=1.0"], r"label_smoothing must be in \[0, 1\)"),
        (["seed=abc"], "seed must be an integer, got 'abc'"),
        (["+pruner=imp", "pruner.rewind_step=-1"], "pruner.rewind_step must be an integer >= 0 optimizer steps"),
        (["+pruner=pdp", "pruner.threshold_every=0"], "pruner.threshold_every must be an integer >= 1"),
        (["+pruner=pdp", "pruner.tau=0"], "pruner.tau must be > 0"),
        (["+pruner=granet", "pruner.granularity=channel"], "granularity=channel is not defined"),
        (["model=timm", "model.name=resnet5O"], "unknown timm model 'resnet5O'; closest: "),
        (["model=timm"], "model=timm needs model.name, e.g. model.name=resnet18"),
        (["model=torchvision", "model.name=inception_v3"], "cannot take 1x16x16 inputs"),
        (["data.batch_size=0"], "data.batch_size must be an integer >= 1"),
        (["data=cifar10", "data.root=/nonexistent", "logger=csv"], "cifar10 not found: expected /nonexistent/cifar-10"),
        (["data=imagenet", "data.root=/nonexistent", "logger=csv"], "ImageNet folder /nonexistent/train not found"),
    ],
)
def test_user_errors_are_one_clear_line(compose, overrides, message):
    with pytest.raises(Exception) as info:  # noqa: PT011 - any user error; the message is what matters
        run(compose(*overrides, fast=not overrides[0].startswith("data=")))  # a typed key fails in compose
    line = one_line_error(info.value)
    assert line is not None and "\n" not in line
    assert __import__("re").search(message, line), line


def test_cli_prints_one_line_before_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "+pruner=gmp", "pruner.sparsity=1.5", f"hydra.run.dir={tmp_path}"],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "error: pruner.sparsity must be in [0, 1), got 1.5" in out
    assert "Traceback" not in out and "Epoch" not in out


def test_a_layer_pruned_to_density_zero_is_warned_about(compose):
    cfg = compose("+pruner=gmp", "pruner.sparsity=0.999", "pruner.update_every=2", "trainer.max_epochs=1")
    with pytest.warns(UserWarning, match=r"layers pruned to density 0 \(the network is cut there\): \['conv2'"):
        run(cfg)


def test_dense_reference_only_for_the_same_budget_and_recipe(compose):
    from sparsetrain.dense_reference import REFERENCES, dense_reference

    expected = json.loads(REFERENCES.read_text())["resnet20/fashion_mnist/3ep/b128/sgd-lr0.1"]
    assert dense_reference(compose(fast=False), "fashion_mnist") == expected  # make train's recipe
    for overrides, extended in [
        (["data.batch_size=64"], False),
        (["optim.lr=0.05"], False),
        (["optim=adamw"], False),
        (["trainer.max_epochs=5"], False),
        (["trainer.max_steps=100"], False),
        ([], True),  # a pruner that trains several rounds (IMP): several times the budget
    ]:
        assert dense_reference(compose(*overrides, fast=False), "fashion_mnist", extended) is None, overrides


def test_the_dense_references_ship_with_the_package_and_the_library_reads_nothing_from_experiments():
    import re

    import sparsetrain
    from sparsetrain.dense_reference import REFERENCES

    package = Path(sparsetrain.__file__).parent
    assert REFERENCES.parent == package and REFERENCES.is_file()
    assert '"dense_references.json"' in (package.parent / "pyproject.toml").read_text()  # declared package data
    uses_experiments = re.compile(r"^\s*(from|import) experiments\b|[\"']experiments[\"'/]", re.MULTILINE)
    assert [p.name for p in package.rglob("*.py") if uses_experiments.search(p.read_text())] == []
