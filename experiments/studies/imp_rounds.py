"""Test accuracy of every IMP round's ticket, from the run's `checkpoints/step<N>.ckpt` snapshots.

One IMP run passes through every sparsity of its grid, but `results.json` tests only the last round. With
`snapshot_every_n_steps` = one round, each snapshot holds a round's trained network just before the next round
prunes and rewinds it; this script finalizes each one exactly as an export would
(`sparsetrain.restore.finalized_network`) and evaluates it on the test set. It writes `rounds.json` next to
`results.json`: per round its sparsity, the training `val_acc` IMP recorded, the test accuracy, the optimizer
steps done by the end of the round and the fit's wall time by then. It may run while the fit goes on: each
snapshot's test result is kept in `tickets.json`, and `rounds.json` lists the rounds recorded so far (all of
them once `results.json` exists).

    .venv/bin/python -m experiments.studies.imp_rounds experiments/studies/unstructured/runs/imp_s0.98_seed0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch import nn

from sparsetrain.restore import finalized_network, load_run_config


@torch.inference_mode()
def test_accuracy(network: nn.Module, loader: torch.utils.data.DataLoader) -> float:
    """Top-1 accuracy of `network` in eval mode over `loader`."""
    network.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((network(x).argmax(1) == y).sum())
        total += int(y.numel())
    return correct / total


def target_sparsity(network: nn.Module) -> float:
    """Fraction of zeros over the weights IMP targets (every conv and linear but the first and the last)."""
    weights = [m.weight for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][1:-1]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def round_history(run_dir: Path) -> list[dict]:
    """IMP's per-round records: from `results.json` once the fit is done, else from its newest checkpoint (a run
    still going, or stopped early: the rounds finished by then, each recorded when the next one began)."""
    results = run_dir / "results.json"
    if results.exists():
        return json.loads(results.read_text())["rounds"]
    saved = list((run_dir / "checkpoints").glob("*.ckpt"))
    if not saved:
        raise SystemExit(f"{run_dir}: no results.json and no checkpoint yet: no IMP round has finished there")
    newest = max(saved, key=lambda p: p.stat().st_mtime)
    callbacks = torch.load(newest, map_location="cpu", weights_only=True)["callbacks"]
    state = next(v["pruner"] for k, v in callbacks.items() if k.startswith("SparsityCallback["))
    print(f"{run_dir}: no results.json yet; rounds recorded in {newest.name}: {len(state['history'])}")
    return state["history"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    cfg = load_run_config(args.run_dir)
    history = round_history(args.run_dir)  # first: each round it lists has its snapshot on disk by now
    snapshots = sorted((args.run_dir / "checkpoints").glob("step*.ckpt"))
    cache_path = args.run_dir / "tickets.json"  # per snapshot step: sparsity and test accuracy (reruns skip them)
    tickets = {int(k): v for k, v in json.loads(cache_path.read_text()).items()} if cache_path.exists() else {}
    if not snapshots and not tickets:
        raise SystemExit(f"no checkpoints/step*.ckpt in {args.run_dir}: run with snapshot_every_n_steps")
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    datamodule.prepare_data()
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    for path in snapshots:
        step = int(path.stem.removeprefix("step"))
        if step in tickets:
            continue
        network, *_ = finalized_network(path, cfg)
        tickets[step] = {"sparsity": target_sparsity(network), "test_acc": test_accuracy(network, loader)}
        print(f"step {step}: sparsity {tickets[step]['sparsity']:.4f}  test {tickets[step]['test_acc']:.4f}")
        cache_path.write_text(json.dumps(tickets, indent=1) + "\n")
    rows = []
    for record in history:
        ticket = tickets.get(record["end_step"])
        if ticket is None:
            raise SystemExit(f"no snapshot at step {record['end_step']} (round {record['round']}'s end)")
        rows.append(
            {
                "round": record["round"],
                "sparsity": ticket["sparsity"],
                "val_acc": record["val_acc"],
                "test_acc": ticket["test_acc"],
                "steps_done": record["end_step"],
                "wall_s": record.get("wall_s"),
            }
        )
        print(f"round {record['round']:2d}  sparsity {ticket['sparsity']:.4f}  val {record['val_acc']:.4f}  "
              f"test {ticket['test_acc']:.4f}  steps {record['end_step']}")  # fmt: skip
    (args.run_dir / "rounds.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
