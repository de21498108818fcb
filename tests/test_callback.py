"""SparsityCallback on a user's own LightningModule around a timm model (no train.py involved)."""

import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import DataLoader, TensorDataset

from sparsetrain import SparsityCallback
from sparsetrain.masking import find_mask_buffers
from sparsetrain.pruners import GMP


class UserModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = timm.create_model("resnet10t", pretrained=False, num_classes=4)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.backbone(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.05)


def test_callback_on_a_users_module_finalizes_into_the_plain_architecture(trainer):
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(0, 4, (32,))), batch_size=8)
    module = UserModule()
    cb = SparsityCallback(GMP(sparsity=0.5, update_every=1, end=0.5))
    trainer(max_epochs=2, callbacks=[cb]).fit(module, train_dataloaders=data)
    assert cb.summary["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert "conv1.0" not in cb.summary["layers"] and "fc" not in cb.summary["layers"]  # stem and head kept dense
    assert find_mask_buffers(module.backbone) == []
    plain = timm.create_model("resnet10t", pretrained=False, num_classes=4)
    plain.load_state_dict(module.backbone.state_dict(), strict=True)
    for name, layer in cb.summary["layers"].items():
        w = plain.get_submodule(name).weight
        assert torch.count_nonzero(w) == round(layer["density"] * w.numel())


def test_an_open_ended_budget_is_a_clear_error(trainer):
    data = DataLoader(TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))), batch_size=8)
    open_ended = trainer(max_epochs=-1, max_time={"minutes": 1}, callbacks=[SparsityCallback(GMP(sparsity=0.5))])
    with pytest.raises(ValueError, match="needs a finite training budget"):
        open_ended.fit(UserModule(), train_dataloaders=data)


@pytest.mark.slow  # two processes, each a full train.py start: about 40 s on 2 cores
def test_multirun_sweep_with_the_joblib_launcher(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            "seed=0,1",
            "trainer=debug",
            "logger=csv",
            "data=fake",
            "model=lenet5",
            "hydra/launcher=joblib_local",
            f"hydra.sweep.dir={tmp_path}",
            "progress_bar=false",
        ],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "0" / "results.json").exists() and (tmp_path / "1" / "results.json").exists()
