"""`sparsetrain.checkpoint_files`: what a path given as a checkpoint is, told from its contents without torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sparsetrain.checkpoint_files import describe, resolve_checkpoint, run_config_path, run_dir_of

ROOT = Path(__file__).resolve().parent.parent


def _lightning_like(path: Path) -> Path:
    """What Lightning's `trainer.save_checkpoint` writes, in miniature (a torch.save archive with a state_dict)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"epoch": 0, "global_step": 3, "pytorch-lightning_version": "2.6.0", "state_dict": {"w": torch.ones(2)}}, path
    )
    return path


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory as a run leaves it: config, checkpoints, results.json, export."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\nmodel:\n  name: lenet5\n")
    _lightning_like(run / "checkpoints" / "last.ckpt")
    _lightning_like(run / "checkpoints" / "best.ckpt")
    (run / "results.json").write_text(json.dumps({"pruner": "gmp", "test_acc": 0.5, "sparsity": 0.8, "steps": 3}))
    (run / "export").mkdir()
    save_file({"w": torch.ones(2)}, str(run / "export" / "model.safetensors"))
    (run / "export" / "model.json").write_text(json.dumps({"format": "sparsetrain-export", "version": 1}))
    return run


def test_importing_it_loads_no_torch():
    code = "import sys, sparsetrain.checkpoint_files; print(sorted({'torch', 'pytorch_lightning'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_a_run_directory_resolves_to_its_last_checkpoint(run_dir):
    last = run_dir / "checkpoints" / "last.ckpt"
    assert resolve_checkpoint(run_dir) == last
    assert resolve_checkpoint(run_dir / "checkpoints") == last  # its checkpoints/ folder too
    assert resolve_checkpoint(last) == last
    assert resolve_checkpoint(run_dir / "checkpoints" / "best.ckpt") == run_dir / "checkpoints" / "best.ckpt"
    assert run_dir_of(last) == run_dir_of(run_dir) == run_dir_of(run_dir / "checkpoints") == run_dir
    assert run_config_path(run_dir) == run_dir / ".hydra" / "config.yaml"


def test_a_checkpoint_may_have_any_name(tmp_path):
    assert resolve_checkpoint(_lightning_like(tmp_path / "step000012.pt")) == tmp_path / "step000012.pt"
    legacy = tmp_path / "legacy.ckpt"  # the torch.save format before torch 1.6: only torch.load can look inside
    torch.save({"state_dict": {}}, legacy, _use_new_zipfile_serialization=False)
    assert resolve_checkpoint(legacy) == legacy


def test_a_run_directory_without_last_ckpt_names_it(run_dir):
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint(run_dir)
    assert str(info.value) == f"ckpt_path={run_dir} is a run directory without checkpoints/last.ckpt " + (
        "(checkpoints/ holds best.ckpt)"
    )
    for ckpt in (run_dir / "checkpoints").iterdir():
        ckpt.unlink()
    with pytest.raises(FileNotFoundError, match=r"without checkpoints/last.ckpt \(no checkpoint was written\)"):
        resolve_checkpoint(run_dir)


def _truncated(path: Path) -> None:
    _lightning_like(path)
    path.write_bytes(path.read_bytes()[:200])


WRONG = [  # (relative path, how to make it or None: the run fixture has it, the message after the path)
    ("nothing/here", None, FileNotFoundError, " does not exist"),
    ("run/results.json", None, ValueError, " is a run's results.json, not a checkpoint: pass the run directory ("),
    ("run/export/model.safetensors", None, ValueError, " is an export's model.safetensors, not a checkpoint"),
    ("run/export/model.json", None, ValueError, " is an export's model.json, not a checkpoint"),
    ("run/export", None, ValueError, " is an export directory (model.safetensors + model.json), not a checkpoint"),
    ("run/.hydra/config.yaml", None, ValueError, " is a run's Hydra config (.hydra/config.yaml), not a checkpoint"),
    ("run/.hydra", None, ValueError, " is a directory but not a run directory"),
    ("conf.yml", lambda p: p.write_text("a: 1\n"), ValueError, " is a YAML file, not a checkpoint"),
    ("other.json", lambda p: p.write_text("[1, 2]"), ValueError, " is a JSON file, not a checkpoint"),
    ("w.safetensors", lambda p: save_file({"w": torch.ones(1)}, str(p)), ValueError, " is a safetensors file, not a"),
    ("empty.ckpt", lambda p: p.write_bytes(b""), ValueError, " is an empty file, not a checkpoint"),
    ("notes.ckpt", lambda p: p.write_text("hello"), ValueError, " is an unrecognized file (not a torch.save archive)"),
    ("plain.ckpt", lambda p: torch.save({"w": torch.ones(1)}, p), ValueError, " is a torch.save file without a state"),
    ("cut.ckpt", _truncated, ValueError, " is a damaged torch.save archive (truncated or corrupted"),
]


@pytest.mark.parametrize(("name", "make", "error", "message"), WRONG, ids=[w[0] for w in WRONG])
def test_anything_else_is_one_line_saying_what_it_is(run_dir, tmp_path, name, make, error, message):
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(error) as info:
        resolve_checkpoint(path)
    text = str(info.value)
    assert text.startswith(f"ckpt_path={path}{message}") and "\n" not in text
    if path.is_file():
        assert describe(path) in text


def test_what_names_the_argument(tmp_path):
    missing = tmp_path / "x.ckpt"
    for what, shown in (("init_from", f"init_from={missing}"), ("export source", f"export source {missing}"), ("", "")):
        with pytest.raises(FileNotFoundError) as info:
            resolve_checkpoint(missing, what=what)
        assert str(info.value) == f"{shown or missing} does not exist"
