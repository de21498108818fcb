"""Write a study's dense accuracy into the package's dense references (`sparsetrain/dense_references.json`), the
number every run of the same budget and recipe reports as `dense_test_acc` in its results.json.

    python -m experiments.studies.dense_reference unstructured   # mean over the study's dense runs

The key (model, data, epochs, batch size, optimizer, learning rate) is read from the study's dense config
(`conf/experiment/<study>_dense.yaml`, composed by Hydra as `train.py` would), the value is the mean test
accuracy of the study's dense runs (`runs/dense_seed*/results.json`), rounded to 4 decimals. Other keys of the
file are kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from experiments.studies.data import STUDIES
from sparsetrain.dense_reference import REFERENCES, reference_key

CONF = Path(__file__).resolve().parents[2] / "conf"


def study_key(study: str, data: str) -> str | None:
    """The reference key of the study's dense protocol, from its composed config; None for a protocol in reduced
    precision (the references are full-precision runs: a key does not name the precision)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", [f"experiment={study}_dense"])
    trainer, optim = cfg.trainer, cfg.optim
    if str(trainer.get("precision", "32-true")) not in ("32", "32-true"):
        return None
    return reference_key(cfg.model.name, data, trainer.max_epochs, cfg.data.batch_size, optim.name, optim.lr)


def write(study: str, references: Path = REFERENCES, studies: Path = STUDIES) -> tuple[str, float, int] | None:
    """Update `references` with the study's dense mean; returns (key, value, number of runs), or None (left
    unchanged) for a study in reduced precision."""
    runs = [json.loads(p.read_text()) for p in sorted((studies / study / "runs").glob("dense_seed*/results.json"))]
    if not runs:
        raise SystemExit(f"no dense run in experiments/studies/{study}/runs (dense_seed*/results.json)")
    datas = {r["data"] for r in runs}
    if len(datas) != 1:
        raise SystemExit(f"the dense runs of {study} trained on different data: {sorted(datas)}")
    key = study_key(study, datas.pop())
    if key is None:
        return None
    value = round(statistics.fmean(float(r["test_acc"]) for r in runs), 4)
    table = json.loads(references.read_text()) if references.exists() else {}
    references.write_text(json.dumps({**table, key: value}, indent=2) + "\n")
    return key, value, len(runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a study with dense runs and conf/experiment/<study>_dense.yaml")
    args = parser.parse_args(argv)
    written = write(args.study)
    if written is None:
        print(f"{args.study} trains in reduced precision: {REFERENCES} left unchanged")
        return
    key, value, n = written
    print(f"{REFERENCES}: {key} = {value} (mean of {n} dense run(s) of {args.study})")


if __name__ == "__main__":
    main()
