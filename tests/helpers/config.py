"""Where the real config lives and the overrides that make a `train.py` run tiny: shared by the fixtures, the
tests and the subprocess helpers (a test never imports `conftest`)."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

# 96 fake 16 px grey images in batches of 16, LeNet-5, 2 epochs on the CPU, CSV logs, an export, no plots.
FAST = [
    "data=fake",
    "data.num_samples=96",
    "data.num_test=32",
    "data.batch_size=16",
    "data.image_size=16",
    "data.in_chans=1",
    "model=lenet5",
    "logger=csv",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "progress_bar=false",
    "export=true",
    "plots=false",
]
