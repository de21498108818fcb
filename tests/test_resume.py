"""Resume end to end through `app.run`: RigL, SET and IMP killed after an epoch equal the uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

from sparsetrain.app import run


class StopAfterEpoch(pl.Callback):
    """Ends fit after a given epoch, as if the job had been killed there (`last.ckpt` is already written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class Steps(pl.Callback):
    """The optimizer steps a fit ran."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)


def exported(run_dir: str) -> Path:
    """The run's exported weights (`model.safetensors` in the run directory or in its export folder)."""
    (path,) = Path(run_dir).rglob("model.safetensors")
    return path


@pytest.mark.parametrize(
    "pruner",
    [
        ["+pruner=rigl", "pruner.sparsity=0.8", "pruner.update_every=2", "pruner.regrow_end=1.0"],
        ["+pruner=set", "pruner.sparsity=0.8", "pruner.update_every=2"],
        ["+pruner=imp", "pruner.sparsity=0.75", "pruner.rounds=2", "pruner.rewind_step=2"],
    ],
    ids=["rigl", "set", "imp"],
)
def test_killed_and_resumed_equals_the_uninterrupted_run(compose, pruner):
    """RigL and SET (the random start and SET's random regrowth continue from the saved generator) and IMP
    (killed in its first round; validation at every epoch end, as `app.run` configures it)."""
    common = ["trainer.deterministic=true", "trainer.max_epochs=3", "test=true", *pruner]
    full = compose(*common)
    run(full)
    first = compose(*common)
    run(first, callbacks=[StopAfterEpoch(0)])
    ckpt = Path(first.output_dir) / "checkpoints" / "last.ckpt"
    killed_at = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    steps = Steps()
    resumed = compose(*common, f"ckpt_path={ckpt}")
    run(resumed, callbacks=[steps])
    assert 0 < killed_at == steps.steps[0]  # resumed mid-run, with update events still to come
    a, b = (json.loads((Path(c.output_dir) / "results.json").read_text()) for c in (full, resumed))
    assert a["steps"] == b["steps"] == killed_at + len(steps.steps)
    assert a["test_acc"] == b["test_acc"] and a["sparsity"] == b["sparsity"]
    wa, wb = (load_file(str(exported(c.output_dir))) for c in (full, resumed))
    for k in wa:
        assert torch.equal(wa[k] == 0, wb[k] == 0), f"mask differs in {k}"
        assert torch.allclose(wa[k], wb[k], atol=1e-6), f"weights differ in {k}"


def test_resume_with_changed_settings_is_refused_naming_every_key(compose):
    """Hydra does not restore a run's config: a resume that repeats the overrides differently is refused in one
    line naming each differing key with both values, before anything is built."""
    first = compose("+pruner=gmp", "pruner.sparsity=0.9", "trainer.max_epochs=1", "test=false", "export=false")
    run(first)
    ckpt = f"ckpt_path={Path(first.output_dir) / 'checkpoints' / 'last.ckpt'}"
    changed = compose("+pruner=gmp", "pruner.sparsity=0.5", "trainer.max_epochs=2", "optim.lr=0.05", ckpt)
    with pytest.raises(ValueError, match="written with other settings") as info:
        run(changed)
    message = str(info.value)
    assert "\n" not in message
    assert "pruner.sparsity: 0.9 in the checkpoint, 0.5 now" in message
    assert "trainer.max_epochs: 1 in the checkpoint, 2 now" in message
    assert "optim.lr: 0.1 in the checkpoint, 0.05 now" in message
    assert not Path(changed.output_dir).exists()  # refused before the run directory exists


def test_a_deliberate_change_is_named_in_resume_allow_changes(compose):
    first = compose("+pruner=gmp", "pruner.sparsity=0.9", "trainer.max_epochs=1", "test=false", "export=false")
    run(first)
    ckpt = f"ckpt_path={Path(first.output_dir) / 'checkpoints' / 'last.ckpt'}"
    more = compose("+pruner=gmp", "pruner.sparsity=0.9", "trainer.max_epochs=2", ckpt, "test=false", "export=false")
    with pytest.raises(ValueError, match="trainer.max_epochs"):
        run(more)
    allowed = compose(
        "+pruner=gmp", "pruner.sparsity=0.9", "trainer.max_epochs=2", ckpt, "resume_allow_changes=[trainer.max_epochs]"
    )
    run(allowed)
    assert json.loads((Path(allowed.output_dir) / "results.json").read_text())["steps"] == 10


def test_a_checkpoint_without_recorded_settings_resumes_with_a_warning(compose, tmp_path, caplog):
    """Checkpoints written before settings were recorded: resumed (pruner still checked), with a warning."""
    first = compose("+pruner=gmp", "pruner.sparsity=0.9", "trainer.max_epochs=1", "test=false", "export=false")
    run(first)
    ckpt = torch.load(Path(first.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del ckpt["callbacks"]["RunSettings"]
    del ckpt["callbacks"]["SparsityCallback[gmp]"]["config"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    resumed = compose("+pruner=gmp", "pruner.sparsity=0.9", "trainer.max_epochs=2", f"ckpt_path={old}")
    with caplog.at_level("WARNING", logger="sparsetrain"):
        run(resumed)
    assert "written before sparsetrain recorded run settings" in caplog.text
    other = compose("+pruner=magnitude", "trainer.max_epochs=2", f"ckpt_path={old}")
    with pytest.raises(ValueError, match=r"written by a run with \+pruner=gmp"):
        run(other)


def test_the_plain_callback_refuses_a_checkpoint_of_other_pruner_settings(tmp_path, trainer):
    """Users of `SparsityCallback` in their own Trainer get the same check (the pruner's settings are in its
    state); `allow_changed` accepts a named key."""
    from sparsetrain import GMP, SparsityCallback
    from tests.helpers.nets import ResNetTiny, UserModule, loader

    def fit(sparsity: float, ckpt: str | None = None, allow: tuple[str, ...] = ()) -> pl.Trainer:
        cb = SparsityCallback(GMP(sparsity=sparsity, update_every=2), allow_changed=allow)
        fitted = trainer(
            max_epochs=2 if ckpt else 1, enable_checkpointing=True, default_root_dir=str(tmp_path), callbacks=[cb]
        )
        torch.manual_seed(0)
        fitted.fit(UserModule(ResNetTiny(in_chans=3, width=8)), train_dataloaders=loader(), ckpt_path=ckpt)
        return fitted

    first = fit(0.9)
    ckpt = first.checkpoint_callback.best_model_path
    with pytest.raises(ValueError, match=r"sparsity: 0.9 in the checkpoint, 0.5 now"):
        fit(0.5, ckpt)
    assert fit(0.5, ckpt, allow=("sparsity",)).global_step > first.global_step


def test_bad_ckpt_paths_are_one_line_exit_2_and_leave_no_run_directory(compose, tmp_path):
    """Through `train.py`: each wrong `ckpt_path` is named for what it is, before anything is built."""
    import subprocess
    import sys

    from tests.helpers.config import FAST

    first = compose("+pruner=gmp", "trainer.max_epochs=1", "test=false")
    run(first)
    done = Path(first.output_dir)
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    cases = [
        (tmp_path / "nowhere.ckpt", [], r"ckpt_path=\S+nowhere.ckpt does not exist"),
        (done / "results.json", [], r"is a run's results.json, not a checkpoint: pass the run directory"),
        (done / "export" / "model.safetensors", [], r"is an export's model.safetensors, not a checkpoint"),
        (tmp_path, [], r"is a directory but not a run directory"),
        (tmp_path / "empty_run", [], r"is a run directory without checkpoints/last.ckpt"),
        (done, ["model=resnet20"], r"written with other settings \(model.name: 'lenet5' in the checkpoint, 'resnet20'"),
    ]
    root = Path(__file__).resolve().parents[1]
    for path, extra, message in cases:
        run_dir = tmp_path / "new_run"
        proc = subprocess.run(
            [sys.executable, "train.py", *FAST, "+pruner=gmp", "trainer.max_epochs=1", *extra, f"ckpt_path={path}",
             f"hydra.run.dir={run_dir}"],
            cwd=root, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        out = (proc.stdout + proc.stderr).strip()
        assert proc.returncode == 2 and len(out.splitlines()) == 1 and out.startswith("error: "), out
        assert __import__("re").search(message, out), out
        assert not run_dir.exists()
