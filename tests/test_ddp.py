"""Two CPU processes on gloo: every rank holds identical masks after every update.

The callback broadcasts rank 0's masks after each update as a guarantee; most tests here switch that broadcast
off, so they show that every rank *decides* the same masks from its own data (weights, all-reduced
gradients, the pruner's generator), which is what keeps the optimizer state and weights identical too.
`python train.py trainer=ddp` itself runs on the CPU (2 gloo processes, `sync_batchnorm` dropped there).
"""

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparsetrain import SparsityCallback
from sparsetrain.pruners import GMP, IMP, PDP, SET, BiP, GraNet, RigL
from tests.helpers.ddp import MaskLog, fit_on_two_ranks

REPO = Path(__file__).resolve().parent.parent


class NoBroadcast(SparsityCallback):
    """The callback without its rank-0 broadcast of the masks."""

    def _sync_masks(self, trainer) -> None:
        pass


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [
        lambda: GraNet(sparsity=0.8, update_every=2),
        lambda: GraNet(sparsity=0.8, init_density=0.5, update_every=2),
        lambda: SET(sparsity=0.8, update_every=2),
        lambda: PDP(sparsity=0.8, warmup=0.1, end=0.6, threshold_every=2),
        lambda: BiP(sparsity=0.8, warmup=0.1, finetune=0.1),
        lambda: GMP(sparsity=0.8, update_every=2),
        lambda: RigL(sparsity=0.8, update_every=2),
        lambda: IMP(sparsity=0.5, rounds=2),
    ],
    ids=["granet_d2s_gradient", "granet_s2s", "set_random", "pdp", "bip", "gmp", "rigl", "imp"],
)
def test_masks_identical_on_every_rank(tmp_path, make):
    cb = NoBroadcast(make())
    log = MaskLog(str(tmp_path / "masks"), cb)
    fit_on_two_ranks(tmp_path, [cb, log])
    ranks = [json.loads(Path(f"{tmp_path / 'masks'}.rank{r}").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) > 5
    assert ranks[0] == ranks[1]
    assert len(set(ranks[0])) > 2  # masks did change during training


@pytest.mark.slow
def test_the_rank_zero_broadcast_runs_through_lightnings_strategy(tmp_path):
    """With the broadcast on (the default), events go through `trainer.strategy.broadcast` under gloo."""
    cb = SparsityCallback(GMP(sparsity=0.8, update_every=2, end=0.8))
    log = MaskLog(str(tmp_path / "masks"), cb)
    fit_on_two_ranks(tmp_path, [cb, log])
    ranks = [json.loads(Path(f"{tmp_path / 'masks'}.rank{r}").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and len(set(ranks[0])) > 2


@pytest.mark.slow
def test_lapp_under_ddp_is_refused_in_one_line(tmp_path):
    """LAPP slims the network mid-training; DDP's buckets would keep stepping the old parameters."""
    from sparsetrain.pruners import LAPP

    with pytest.raises(Exception, match="DistributedDataParallel cannot follow"):
        fit_on_two_ranks(tmp_path, [SparsityCallback(LAPP(max_flops_ratio=0.5))])


# ------------------------------------------------------------------------------------------ train.py trainer=ddp
# train.py with one more callback. Executed in this script's own `__main__`, so `sys.argv[0]` stays this script
# and Lightning starts the second rank with it too (`runpy.run_path` would point it at train.py).
RANK_LOG_MAIN = """
import sys

sys.path.insert(0, {repo!r})
import sparsetrain.app as app
from tests.helpers.ddp import MaskLog

run = app.run
app.run = lambda cfg, callbacks=None: run(cfg, [*(callbacks or []), MaskLog({log!r})])
with open({train!r}) as f:
    exec(compile(f.read(), {train!r}, "exec"), {{"__name__": "__main__", "__file__": {train!r}}})
"""

TINY_DDP = [
    "trainer=ddp",  # devices=2, sync_batchnorm=true; accelerator auto: gloo on a machine without CUDA
    "data=fake",
    "data.num_samples=160",
    "data.num_test=32",
    "data.image_size=8",
    "data.batch_size=8",  # 72 samples per rank: 9 optimizer steps per epoch
    "trainer.max_steps=8",
    "trainer.enable_model_summary=false",
    "logger=csv",
    "plots=false",
    "progress_bar=false",
]


def train_py(main: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(main), *overrides], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    return proc, time.perf_counter() - start


def test_train_py_trainer_ddp_runs_on_two_cpu_processes(tmp_path):
    """`train.py trainer=ddp` with a BatchNorm network: 2 gloo processes (no CUDA), identical masks and weights.

    `train.py` is run as written (through a main that only adds a per-rank log of the masks); both ranks end
    with the same masks after every step and the same weights, and rank zero writes results.json.
    """
    from sparsetrain.distributed import cuda_available

    if cuda_available():
        pytest.skip("accelerator=auto would pick the GPUs; this is the CPU (gloo) path")
    main, log = tmp_path / "train_ranks.py", tmp_path / "masks"
    main.write_text(RANK_LOG_MAIN.format(repo=str(REPO), log=str(log), train=str(REPO / "train.py")))
    run_dir = tmp_path / "run"
    proc, _ = train_py(
        main,
        *TINY_DDP,
        "model=resnet20",  # BatchNorm: with sync_batchnorm kept, DDP on CPU refuses it
        "+pruner=granet",
        "pruner.sparsity=0.8",
        "pruner.update_every=2",  # prune-and-regrow by the all-reduced gradient every other step
        f"hydra.run.dir={run_dir}",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "SyncBatchNorm layers only work with GPU modules" not in out
    assert out.count("trainer.sync_batchnorm dropped") == 1, out[-4000:]  # rank zero only
    assert "distributed_backend=gloo" in out and "Starting with 2 processes" in out

    results = json.loads((run_dir / "results.json").read_text())
    assert results["pruner"] == "granet" and results["model"] == "resnet20"
    assert results["steps"] == 8
    assert results["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert results["test_acc"] is not None and 0.0 <= results["test_acc"] <= 1.0
    assert (run_dir / "export" / "model.safetensors").is_file()

    ranks = [json.loads(Path(f"{log}.rank{r}").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 8 + 1  # a mask hash per optimizer step, the weights at the end
    assert ranks[0] == ranks[1]
    assert len(set(ranks[0][:-1])) > 2  # masks did change during training


def test_train_py_refuses_lapp_under_ddp_before_launching(tmp_path):
    """One `error:` line, exit 2, printed once, before a second process or the run directory exists."""
    run_dir = tmp_path / "run"
    proc, _ = train_py(REPO / "train.py", *TINY_DDP, "model=resnet20", "+pruner=lapp", f"hydra.run.dir={run_dir}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-4000:]
    errors = [line for line in out.splitlines() if "error:" in line]
    assert len(errors) == 1 and "LAPP slims the network mid-training" in errors[0], out[-4000:]
    assert "Traceback" not in out and "GLOBAL_RANK: 1" not in out
    assert not run_dir.exists()


# ------------------------------------------------------------------------------------------ sparsetrain.distributed
@pytest.mark.parametrize(
    ("accelerator", "cuda", "dropped"),
    [("cpu", True, True), ("auto", False, True), ("gpu", False, True), ("mps", False, True)]
    + [("auto", True, False), ("gpu", True, False), ("cuda", True, False), ("tpu", False, False)],
)
def test_sync_batchnorm_only_where_it_runs(monkeypatch, caplog, accelerator, cuda, dropped):
    from sparsetrain import distributed

    monkeypatch.setattr(distributed, "cuda_available", lambda: cuda)
    cfg = {"accelerator": accelerator, "devices": 2, "sync_batchnorm": True}
    with caplog.at_level(logging.INFO, logger="sparsetrain"):
        assert distributed.trainer_overrides(cfg) == ({"sync_batchnorm": False} if dropped else {})
    assert ("sync_batchnorm dropped" in caplog.text) == dropped
    assert distributed.trainer_overrides({**cfg, "sync_batchnorm": False}) == {}


def test_lapp_refused_for_every_multi_process_trainer(compose):
    from sparsetrain.config import ConfigError
    from sparsetrain.distributed import check_config, world_size

    ddp = compose("trainer=ddp", "+pruner=lapp")
    assert world_size(ddp.trainer) == 2
    with pytest.raises(ConfigError, match="LAPP slims the network mid-training.*2 processes"):
        check_config(ddp)
    check_config(compose("trainer=ddp", "+pruner=lapp", "trainer.devices=1"))
    check_config(compose("trainer=ddp", "+pruner=lapp", "ckpt_path=slimmed.ckpt"))  # a slimmed run resumes
    check_config(compose("trainer=ddp", "+pruner=gmp"))
    check_config(compose("+pruner=lapp"))
    with pytest.raises(ConfigError, match="4 processes"):
        check_config(compose("trainer=ddp", "+pruner=lapp", "+trainer.num_nodes=2"))
