"""`init_from=`: a run starts from another run's trained weights, loaded before the pruner attaches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from sparsetrain.app import prepare, run
from sparsetrain.errors import one_line_error


def _exported(cfg) -> dict[str, torch.Tensor]:
    return load_file(Path(cfg.output_dir) / "export" / "model.safetensors")


@pytest.fixture
def dense_run(compose):
    cfg = compose("trainer.max_epochs=1")
    run(cfg)
    return cfg


def test_bip_from_a_dense_run_prunes_the_loaded_weights(compose, dense_run):
    """The paper's setting: BiP with no warm-up starts from the trained dense network, not from a fresh init."""
    source = _exported(dense_run)
    cfg = compose("+pruner=bip", "pruner.warmup=0", "pruner.sparsity=0.5", f"init_from={dense_run.output_dir}")
    network = prepare(cfg)["network"]
    assert network.state_dict().keys() == source.keys()
    assert all(torch.equal(v, source[k]) for k, v in network.state_dict().items())
    run(cfg)
    results = json.loads((Path(cfg.output_dir) / "results.json").read_text())
    assert results["init_from"] == dense_run.output_dir and results["dense_test_acc"] is None
    assert results["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_a_sparse_checkpoint_is_loaded_as_its_finalized_network(compose):
    """From a `.ckpt`: exactly the network that run exported (masks folded into zeros)."""
    sparse = compose("+pruner=gmp", "pruner.sparsity=0.7", "trainer.max_epochs=1")
    run(sparse)
    (Path(sparse.output_dir) / ".hydra").mkdir()
    OmegaConf.save(sparse, Path(sparse.output_dir) / ".hydra" / "config.yaml")  # what Hydra writes in a run
    ckpt = Path(sparse.output_dir) / "checkpoints" / "last.ckpt"
    network = prepare(compose("+pruner=magnitude", "pruner.sparsity=0.8", f"init_from={ckpt}"))["network"]
    exported = _exported(sparse)
    assert all(torch.equal(v, exported[k]) for k, v in network.state_dict().items())
    assert sum(int((v == 0).sum()) for v in exported.values()) > 0


def test_a_source_of_another_architecture_is_one_clear_line(compose, dense_run):
    cfg = compose("data.num_classes=7", f"init_from={dense_run.output_dir}")
    with pytest.raises(ValueError, match="does not fit model lenet5") as info:
        prepare(cfg)
    line = one_line_error(info.value)
    assert "does not fit model lenet5" in line and "expected" in line and "\n" not in line


def test_a_directory_that_is_no_run_is_refused(compose, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no export .* and no checkpoints/last.ckpt"):
        prepare(compose(f"init_from={tmp_path / 'empty'}"))
