"""Golden runs: every pruner × every granularity it defines, a short fixed-seed fit, compared with the record in
`tests/golden/runs.json`: the zero pattern of every weight after finalizing (exactly), the pruner's event count,
the metrics the callback logged, the final weights' magnitude and the pruner's own state's (to 1e-5).

A refactor that keeps behaviour keeps these; a deliberate change of behaviour rewrites the record
(`SPARSETRAIN_UPDATE_GOLDEN=1 pytest tests/test_golden.py`) in the same commit, which says why.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from sparsetrain import SparsityCallback
from tests.helpers.matrix import PRUNERS, make
from tests.helpers.nets import Net, loader

RECORD = Path(__file__).parent / "golden" / "runs.json"
UPDATE = bool(os.environ.get("SPARSETRAIN_UPDATE_GOLDEN"))
LOGGED = ("sparsity/", "mask/", "flops/", "lapp/", "bip/", "pdp/", "granet/", "imp/")
CELLS = [(k, g) for k, cls in sorted(PRUNERS.items()) for g in cls.granularities]


def _pattern(weight: torch.Tensor) -> str:
    """Which entries are zero, as a short hash."""
    return hashlib.sha1((weight.detach() == 0).cpu().numpy().tobytes()).hexdigest()[:16]


class MetricsRecord(Logger):
    """Every value the loggers receive whose name is a pruner's metric, as `name@step`."""

    name, version = "record", 0

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, float] = {}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.values |= {f"{k}@{step}": float(v) for k, v in metrics.items() if k.startswith(LOGGED)}

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass


def golden_run(key: str, granularity: str) -> dict:
    torch.manual_seed(0)
    module, record = Net(), MetricsRecord()
    cb = SparsityCallback(make(key, granularity))
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=record, log_every_n_steps=1, callbacks=[cb],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, train_dataloaders=loader())
    weights = {n: p for n, p in module.named_parameters() if n.endswith("weight") and p.ndim > 1}
    return {
        "events": cb.pruner.events,
        "zeros": {n: _pattern(w) for n, w in weights.items()},
        "nonzero": sum(int(w.count_nonzero()) for w in weights.values()),
        "metrics": dict(sorted(record.values.items())),
        "weight_abs_sum": float(sum(p.detach().abs().sum() for p in module.parameters())),
        "state_abs_sum": _float_sum(cb.pruner.state_dict()),  # scores, thresholds, their optimizers' state
    }


def _float_sum(node) -> float:
    """Σ|x| over every floating-point tensor in a nested state (its layout may change, its values may not)."""
    if torch.is_tensor(node):
        return float(node.detach().double().abs().sum()) if node.is_floating_point() else 0.0
    if isinstance(node, dict):
        return sum(_float_sum(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return sum(_float_sum(v) for v in node)
    return 0.0


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text()) if RECORD.exists() else {}


@pytest.mark.parametrize(("key", "granularity"), CELLS, ids=[f"{k}-{g}" for k, g in CELLS])
def test_a_golden_run_gives_the_recorded_masks_and_metrics(key, granularity, record):
    got = golden_run(key, granularity)
    name = f"{key}-{granularity}"
    if UPDATE:
        record[name] = got
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(dict(sorted(record.items())), indent=1) + "\n")
        return
    assert name in record, f"no golden record for {name}: SPARSETRAIN_UPDATE_GOLDEN=1 pytest {__file__}"
    want = record[name]
    assert got["events"] == want["events"]
    assert got["zeros"] == want["zeros"]
    assert got["nonzero"] == want["nonzero"]
    assert got["metrics"].keys() == want["metrics"].keys()
    for k, v in want["metrics"].items():
        assert got["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert got["weight_abs_sum"] == pytest.approx(want["weight_abs_sum"], rel=1e-5)
    assert got["state_abs_sum"] == pytest.approx(want["state_abs_sum"], rel=1e-5)
