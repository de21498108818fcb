"""Bad input: every invalid configuration fails before anything is built, in one line, with one exit code.

The table goes through `check_command_line`, the checks `train.py`'s Hydra callback runs before Hydra creates a
run directory (the same composition, the same checks, in-process so the table stays fast); a subset, the
Hydra-level mistakes included, goes through the real `python train.py` in a subprocess.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sparsetrain.cli import check_command_line
from sparsetrain.config import CONF_DIR
from sparsetrain.devices import gpu_count
from sparsetrain.errors import EXIT_CODE, one_line_error

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = gpu_count() == 0
FAST = ["data=fake", "model=lenet5", "data.image_size=16", "data.in_chans=1", "logger=csv", "trainer.max_epochs=1"]

# (overrides, what the one line must say). Each names the problem and what is allowed.
BAD = [
    # pruner keys every method shares (checked without torch)
    (["+pruner=gmp", "pruner.sparsity=1.5"], r"pruner\.sparsity must be in \[0, 1\), got 1\.5"),
    (["+pruner=gmp", "pruner.sparsity=-0.1"], r"pruner\.sparsity must be in \[0, 1\), got -0\.1"),
    (["+pruner=gmp", "pruner.granularity=nm", "pruner.n=4", "pruner.m=4"], r"N:M needs integers 0 < n < m, got n=4"),
    (["+pruner=gmp", "pruner.granularity=nm", "pruner.sparsity=0.9"], r"contradicts granularity=nm with 2:4"),
    (["+pruner=gmp", "pruner.granularity=block"], r"pruner\.granularity must be one of unstructured, channel, nm"),
    (["+pruner=gmp", "pruner.allocation=erkk"], r"pruner\.allocation must be one of uniform, global, erk"),
    (["+pruner=gmp", "pruner.update_every=0"], r"pruner\.update_every must be an integer >= 1 optimizer step, got 0"),
    (["+pruner=gmp", "pruner.begin=0.6", "pruner.end=0.3"], r"pruner\.end \(0\.3\) must not be before pruner\.begin"),
    (["+pruner=lapp", "pruner.max_flops_ratio=0"], r"pruner\.max_flops_ratio must be in \(0, 1\].*, got 0$"),
    (["+pruner=lapp", "pruner.max_flops_ratio=1.5"], r"pruner\.max_flops_ratio must be in \(0, 1\].*, got 1\.5"),
    # pruner keys a method checks in its constructor
    (["+pruner=imp", "pruner.rounds=0"], r"pruner\.rounds must be an integer >= 1, got 0"),
    (["+pruner=granet", "pruner.granularity=channel"], r"GraNet .* granularity=channel is not defined for it"),
    (["+pruner=lapp", "pruner.granularity=unstructured"], r"LAPP prunes channels only"),
    (["+pruner=bip", "pruner.begin=0.2"], r"pruner\.begin is not used by bip"),
    (["+pruner=pdp", "pruner.tau=0"], r"pruner\.tau must be > 0"),
    # unknown names: config groups (Hydra), the built-in model, a misspelt key or group
    (["+pruner=gnp"], r"unknown pruner 'gnp': did you mean gmp\? pruner options: bip, gmp, granet"),
    (["+pruner=nonexistent"], r"unknown pruner 'nonexistent': pruner options: bip, gmp"),
    (["pruner=gmp"], r"pruner is not in the default config, so it is added with a \+: \+pruner=gmp \(pruner options"),
    (["model=resnet2"], r"unknown model 'resnet2': did you mean resnet20 .*model options: "),
    (["data=cifar11"], r"unknown data 'cifar11': did you mean cifar10 .*data options: "),
    (["model.name=resnet2"], r"unknown builtin model 'resnet2' \(model\.name\): did you mean resnet20"),
    (["pruner.sparsity=0.5"], r"pruner\.sparsity sets a key of pruner, but this run has no pruner: add \+pruner="),
    (["+pruner=gmp", "pruner.sparsty=0.5"], r"unknown key pruner\.sparsty: did you mean sparsity\? pruner keys: "),
    (["+prunr=gmp"], r"unknown top-level key 'prunr': did you mean pruner"),
    (["modl=lenet5"], r"unknown key modl: did you mean model\?"),
    (["+pruner=gmp", "pruner.sparsity=[1"], r"cannot parse the override 'pruner\.sparsity=\[1'"),
    (["seed=0,1"], r"a sweep \(a,b\) needs -m"),
    # missing data
    (["data=cifar10", "data.root=/nonexistent"], r"cifar10 not found: expected /nonexistent/cifar-10-batches-py"),
    (["data=imagenet", "data.root=/nonexistent"], r"ImageNet folder /nonexistent/train not found"),
    (["data=imagenet"], r"data\.root is required for imagenet"),
    # trainer: accelerator, devices, budget, precision
    pytest.param(
        ["trainer.accelerator=gpu"],
        r"trainer\.accelerator=gpu but this machine has no GPU",
        marks=pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU"),
    ),
    (["trainer.accelerator=cpu", "trainer.devices=64"], r"trainer\.devices=64 asks for 64 CPU processes but this"),
    pytest.param(
        ["trainer.devices=64"],
        r"trainer\.devices=64 with accelerator=auto: this machine has no GPU",
        marks=pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU"),
    ),
    (["trainer.accelerator=tpux"], r"trainer\.accelerator='tpux' is unknown: did you mean tpu .*allowed: auto, cpu"),
    (["trainer.devices=0"], r"trainer\.devices must be an integer >= 1, -1 or auto"),
    (["trainer.precision=fp16"], r"trainer\.precision='fp16' is unknown: .*allowed: 16, 16-mixed"),
    (["trainer.max_epochs=0"], r"trainer\.max_epochs must be an integer >= 1 \(or -1: no limit\), got 0"),
    (["+pruner=gmp", "trainer.max_epochs=-1"], r"training needs a finite budget"),
    # optimizer, data, seed
    (["optim.lr=-0.1"], r"optim\.lr must be > 0, got -0\.1"),
    (["optim.lr=fast"], r"invalid optim config: Value 'fast'"),
    (["data.batch_size=0"], r"data\.batch_size must be an integer >= 1, got 0"),
    (["data.val_fraction=1.0"], r"data\.val_fraction must be in \[0, 1\), got 1\.0"),
    (["seed=abc"], r"seed must be an integer, got 'abc'"),
    (["seed=1.5"], r"seed must be an integer, got 1\.5"),
    (["snapshot_every_n_steps=0"], r"snapshot_every_n_steps must be null or an integer >= 1 optimizer steps, got 0"),
    (["init_from=/nonexistent/run"], r"init_from=/nonexistent/run does not exist \(a run directory, its export/"),
    # a sweep: every job is checked before the first one starts
    (["-m", "seed=0,1", "+pruner=gmp", "pruner.sparsity=0.5,1.5"], r"got 1\.5 \(sweep job: seed=0 \+pruner=gmp"),
    (["-m", "+pruner=gmp,pdp", "pruner.sparsity=0.9"], r"written as a sweep of one: pruner\.sparsity=choice\(0\.9\)$"),
]


def _line(overrides: list[str]) -> str:
    with pytest.raises(Exception) as info:  # noqa: PT011 - any user error; the one line is what matters
        check_command_line(["train.py", *overrides], CONF_DIR)
    line = one_line_error(info.value, CONF_DIR)
    assert line is not None, f"not a user error: {info.value!r}"
    return line


def test_there_are_at_least_25_bad_configurations():
    assert len(BAD) >= 25


@pytest.mark.parametrize(("overrides", "message"), BAD)
def test_bad_configuration_is_one_line_naming_the_problem(overrides, message):
    line = _line(overrides)
    assert "\n" not in line and "Traceback" not in line
    assert re.search(message, line), line


def test_good_configurations_pass_the_same_checks():
    for overrides in (
        [],
        ["+pruner=gmp", "pruner.granularity=nm"],
        ["+pruner=lapp"],
        ["+pruner=magnitude", "pruner.begin=0.9"],
        ["trainer=ddp", "trainer.accelerator=cpu"],
        ["-m", "seed=0,1", "+pruner=gmp,rigl"],
        ["-m", "+pruner=gmp,rigl", "pruner.sparsity=choice(0.9)"],  # as the sweep-of-one error says
    ):
        assert check_command_line(["train.py", *overrides], CONF_DIR) == ["train.py", *overrides]


def _cli(*args: str, run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


CLI = [  # through the real entry point: Hydra-level mistakes and a project check, each one line, exit 2
    (["+pruner=gnp"], r"unknown pruner 'gnp': did you mean gmp\?"),
    (["+pruner=nonexistent"], r"unknown pruner 'nonexistent': pruner options: bip, gmp"),
    (["pruner=gmp"], r"added with a \+: \+pruner=gmp "),
    (["model=resnet2"], r"unknown model 'resnet2': did you mean resnet20"),
    (["+pruner=gmp", "pruner.sparsty=0.5"], r"unknown key pruner\.sparsty: did you mean sparsity\?"),
    (["+pruner=gmp", "pruner.sparsity=[1"], r"cannot parse the override"),
    (["+pruner=gmp", "pruner.sparsity=1.5"], r"pruner\.sparsity must be in \[0, 1\), got 1\.5"),
    pytest.param(
        ["trainer.accelerator=gpu"],
        r"no GPU",
        marks=pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU"),
    ),
]


@pytest.mark.parametrize(("overrides", "message"), CLI)
def test_cli_bad_configuration_is_one_line_and_exit_code_2_before_anything_is_built(overrides, message, tmp_path):
    proc = _cli(*overrides, run_dir=tmp_path / "run")
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == EXIT_CODE, out
    assert len(out.splitlines()) == 1, out  # nothing else printed: no model summary, no Lightning banner
    assert out.startswith("error: ") and re.search(message, out), out
    assert "Traceback" not in out
    assert not (tmp_path / "run").exists()  # checked before Hydra made the run directory


def test_light_errors_import_neither_torch_nor_lightning(tmp_path):
    """The common mistakes are reported before torch loads (the time to the line is Python + Hydra, ~1 s)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "train.py", "+pruner=gmp", "pruner.sparsity=1.5", "trainer.devices=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_CODE
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert {"torch", "pytorch_lightning", "timm", "torchvision"}.isdisjoint(imported)
    assert "error: pruner.sparsity must be in [0, 1), got 1.5" in proc.stderr


def test_a_failed_run_leaves_an_earlier_runs_results_untouched(tmp_path):
    run_dir = tmp_path / "run"
    files = {
        "results.json": '{"test_acc": 0.91}',
        ".hydra/config.yaml": "seed: 0\n",
        ".hydra/overrides.yaml": "- +pruner=gmp\n",
        "train.log": "done\n",
        "csv/metrics.csv": "step,train/loss\n0,1.0\n",
    }
    for name, text in files.items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text(text)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    for bad in (["+pruner=gmp", "pruner.sparsity=1.5"], ["+pruner=gnp"]):
        proc = _cli(*bad, run_dir=run_dir)
        assert proc.returncode == EXIT_CODE
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    assert {name: (run_dir / name).read_text() for name in files} == files


def test_channel_pruning_with_nothing_prunable_is_one_line_and_keeps_earlier_results(compose):
    """Known only once the model is traced: it fails at attach, before the first training step."""
    from sparsetrain.app import run

    cfg = compose("model=resnet20", "+pruner=gmp", "pruner.granularity=channel", "pruner.include=[layer1.0.conv2]")
    Path(cfg.output_dir).mkdir(parents=True)
    (Path(cfg.output_dir) / "results.json").write_text('{"test_acc": 0.91}')
    with pytest.raises(ValueError) as info:  # noqa: PT011 - the one line is what matters
        run(cfg)
    assert one_line_error(info.value) == "no prunable channel group: every group is coupled to a layer kept dense"
    assert (Path(cfg.output_dir) / "results.json").read_text() == '{"test_acc": 0.91}'


# ------------------------------------------------------------------------------------------------ the lists
def test_checked_lists_match_the_libraries_and_modules_they_mirror():
    import pytorch_lightning as pl
    from pytorch_lightning.accelerators import AcceleratorRegistry

    from sparsetrain import config
    from sparsetrain.data import CIFAR10DataModule, CIFAR100DataModule
    from sparsetrain.models import BUILTIN_MODELS

    precisions = config.lightning_precisions()  # read from Lightning's Trainer signature, not copied
    assert {"32-true", "16-mixed", "bf16-mixed", "64-true", "32", "16", "bf16", "64"} <= set(precisions)
    with pytest.raises(ValueError, match="fp16"):  # what Lightning itself refuses
        pl.Trainer(precision="fp16")
    assert set(AcceleratorRegistry.available_accelerators()) <= set(config.lightning_accelerators())
    assert sorted(config.builtin_models()) == sorted(BUILTIN_MODELS)
    assert config.DATA_FOLDERS["CIFAR10DataModule"] == ("cifar10", (CIFAR10DataModule.folder,))
    assert config.DATA_FOLDERS["CIFAR100DataModule"] == ("cifar100", (CIFAR100DataModule.folder,))


# ------------------------------------------------------------------------------------------------ help
def test_help_lists_every_registered_pruner_with_its_line_and_keys():
    import yaml

    from sparsetrain.cli import summary
    from sparsetrain.pruners import list_pruners

    proc = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    blocks = re.split(r"\n  (?=\+pruner=)", out.split("== Pruners")[1].split("\n\n")[0])[1:]
    pruners = list_pruners()
    assert [b.split()[0] for b in blocks] == [f"+pruner={key}" for key in sorted(pruners)]
    shared = yaml.safe_load((CONF_DIR / "pruner_shared" / "keys.yaml").read_text())
    for block in blocks:
        key = block.split()[0].removeprefix("+pruner=")
        cls = pruners[key]
        assert summary(cls) in " ".join(block.split())  # one line from the class docstring
        declared = yaml.safe_load((CONF_DIR / "pruner" / f"{key}.yaml").read_text())
        keys = {**(shared if declared.pop("defaults", None) else {}), **declared}
        keys.pop("_target_")
        for name in keys:
            ignored = name in cls.unused_keys  # a key the method ignores is left out of its line
            assert (f" {name}=" in f" {block.split(chr(10), 1)[1]}") != ignored, (key, name)
    assert "== Examples ==" in out and "python train.py +pruner=gmp pruner.sparsity=0.95" in out
    assert "${" not in out  # the config is shown resolved


def test_cfg_job_shows_resolved_values():
    proc = subprocess.run(
        [sys.executable, "train.py", "+pruner=gmp", "pruner.granularity=nm", "pruner.n=1", "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sparsity: 0.75" in proc.stdout and "seed: 0" in proc.stdout
    assert "${" not in proc.stdout


def test_a_sweep_from_a_run_that_kept_no_weights_stops_before_its_first_job(tmp_path):
    """A committed study run keeps results.json only: starting from it fails in one line at the check, not in
    the sweep's first job after Hydra made its directory."""
    run = tmp_path / "dense_seed0"
    run.mkdir()
    (run / "results.json").write_text("{}")
    line = _line(["-m", "seed=0,1", "+pruner=bip", f"init_from={run}", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    expected = f"init_from={run} holds no export (model.json) and no checkpoints/last.ckpt (sweep job: seed=0"
    assert line.startswith(expected)
    assert not (tmp_path / "sweep").exists()
