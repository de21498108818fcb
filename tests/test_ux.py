"""What a Lightning + Hydra + W&B user sees: a W&B run per sweep job, a sweep summary, plots, short budgets, quiet."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from sparsetrain.app import run

ROOT = Path(__file__).resolve().parent.parent
TINY = [  # a job of a few seconds: fake 16-px images, LeNet-5, 15 optimizer steps
    "data=fake",
    "data.num_samples=96",
    "data.num_test=32",
    "data.batch_size=16",
    "data.image_size=16",
    "data.in_chans=1",
    "model=lenet5",
    "trainer=cpu",
    "trainer.enable_model_summary=false",
    "progress_bar=false",
    "export=false",
]


def _wandb_runs(run_dir: Path) -> list[Path]:
    """The offline W&B run files (`wandb/offline-run-<time>-<id>/run-<id>.wandb`) of one run directory."""
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _as_sweep_job(cfg, sweep_dir: Path, num: int, task: list[str]):
    """Make Hydra report `cfg` as job `num` of a multirun in `sweep_dir`, as it does inside `train.py -m`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        full = hydra_compose("train", overrides=task, return_hydra_config=True)
    with open_dict(full):
        full.hydra.mode = RunMode.MULTIRUN
        full.hydra.sweep.dir = str(sweep_dir)
        full.hydra.job.num = num
        full.hydra.overrides.task = task
    HydraConfig.instance().set_config(full)
    return cfg


@pytest.fixture
def hydra_job():
    """Sets HydraConfig like a sweep job does; clears it afterwards."""
    from hydra.core.hydra_config import HydraConfig

    yield _as_sweep_job
    HydraConfig.instance().cfg = None


@pytest.fixture
def offline_wandb(monkeypatch):
    """W&B on, offline (the default a user without an API key gets); the test suite otherwise disables it."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_each_sweep_job_gets_its_own_finished_wandb_run_grouped_by_the_sweep(
    compose, hydra_job, offline_wandb, tmp_path
):
    import wandb

    sweep = tmp_path / "multirun" / "sweep1"
    dirs = []
    for num, seed in enumerate((0, 1)):
        cfg = compose(f"seed={seed}", "logger=default", "trainer.max_epochs=1", "export=false")
        run(hydra_job(cfg, sweep, num, [f"seed={seed}"]))
        assert wandb.run is None  # each job finishes its run: the next job cannot reuse it
        dirs.append(Path(cfg.output_dir))
    ids = []
    for seed, run_dir in enumerate(dirs):
        (record,) = _wandb_runs(run_dir)  # job 1 used to log into job 0's run and have none of its own
        run_id = (run_dir / "wandb_id.txt").read_text().strip()
        assert record.name == f"run-{run_id}.wandb"
        data = record.read_bytes()
        assert b"multirun/sweep1" in data  # the W&B group: the sweep
        assert f"seed={seed}".encode() in data and f"seed={1 - seed}".encode() not in data  # named by its overrides
        ids.append(run_id)
    assert ids[0] != ids[1]


def test_a_resumed_run_continues_its_wandb_run(compose, offline_wandb):
    first = compose("logger=default", "trainer.max_epochs=1", "export=false", "test=false")
    run(first)
    first_dir = Path(first.output_dir)
    run_id = (first_dir / "wandb_id.txt").read_text().strip()
    assert [p.name for p in _wandb_runs(first_dir)] == [f"run-{run_id}.wandb"]
    resumed = compose(
        "logger=default",
        "trainer.max_epochs=2",
        "resume_allow_changes=[trainer.max_epochs]",  # a longer budget on purpose
        "export=false",
        f"ckpt_path={first_dir / 'checkpoints/last.ckpt'}",
    )
    run(resumed)
    resumed_dir = Path(resumed.output_dir)
    assert (resumed_dir / "wandb_id.txt").read_text().strip() == run_id
    assert [p.name for p in _wandb_runs(resumed_dir)] == [f"run-{run_id}.wandb"]  # same id: W&B appends to it
    fresh = compose("logger=default", "trainer.max_epochs=1", "export=false", "test=false")
    run(fresh)
    assert (Path(fresh.output_dir) / "wandb_id.txt").read_text().strip() != run_id  # a new run is a new W&B run


def test_a_max_steps_budget_inside_one_epoch_validates_logs_and_writes_best_ckpt(compose, recwarn):
    """30 steps of a 39-batch epoch: the fit ends before any epoch does; it still validates once, at its end."""
    cfg = compose(
        "+pruner=gmp", "data.num_samples=700", "trainer.max_steps=30", "trainer.log_every_n_steps=50", "export=false"
    )
    run(cfg)
    run_dir = Path(cfg.output_dir)
    r = json.loads((run_dir / "results.json").read_text())
    assert r["steps"] == 30 and r["val_acc"] is not None
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    rows = _metrics(run_dir)
    assert [int(row["step"]) for row in rows if row.get("val/acc")] == [29]  # once, at the last step
    assert len([row for row in rows if row.get("train/loss")]) >= 5  # logged every 3 steps, not every 50
    assert not [w for w in recwarn if "val/acc" in str(w.message)]


def test_every_run_writes_plots_and_the_standalone_entry_redraws_them(compose):
    from matplotlib.image import imread

    cfg = compose("+pruner=granet", "pruner.sparsity=0.8", "pruner.update_every=2", "export=false", "plots=true")
    run(cfg)
    plots = Path(cfg.output_dir) / "plots"
    for name in ("training.png", "layers.png"):
        image = imread(plots / name)
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert image[..., :3].std() > 0.05  # drawn, not blank
        (plots / name).unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "sparsetrain.plots", cfg.output_dir], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert (plots / "training.png").is_file() and (plots / "layers.png").is_file()
    proc = subprocess.run(
        [sys.executable, "-m", "sparsetrain.plots", str(plots)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "results.json not found" in proc.stderr


def test_sweep_summary_has_one_row_per_job_with_the_swept_overrides(tmp_path):
    from sparsetrain.sweep_summary import write_summary

    for num, (seed, channels) in enumerate([(0, None), (1, 0.5)]):
        job = tmp_path / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}", "+pruner=gmp"]))
        results = {"sparsity": 0.9, "channel_sparsity": channels, "test_acc": 0.5 + seed / 10, "val_acc": 0.4}
        results |= {"flops_dense": 200, "flops_sparse": 50, "train_time_s": 3.5}
        (job / "results.json").write_text(json.dumps(results))
    (tmp_path / "2" / ".hydra").mkdir(parents=True)  # a job that did not finish
    (tmp_path / "2" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=2", "+pruner=gmp"]))
    path = write_summary(tmp_path)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1", "2"]
    assert [r["overrides"] for r in rows] == ["seed=0", "seed=1", "seed=2"]  # the shared +pruner=gmp left out
    assert rows[1]["channel_sparsity"] == "0.5" and rows[0]["channel_sparsity"] == ""
    assert float(rows[1]["test_acc"]) == 0.6 and float(rows[0]["flops_ratio"]) == 0.25
    assert rows[2]["sparsity"] == "" and rows[2]["test_acc"] == ""


def test_channel_runs_report_channel_sparsity_in_results_and_the_final_line(compose, caplog):
    cfg = compose("+pruner=gmp", "pruner.granularity=channel", "pruner.sparsity=0.5", "pruner.update_every=2")
    with caplog.at_level(logging.INFO, logger="sparsetrain"):
        run(cfg)
    r = json.loads((Path(cfg.output_dir) / "results.json").read_text())
    assert r["channel_sparsity"] == pytest.approx(0.5, abs=0.05)
    assert r["sparsity"] != pytest.approx(r["channel_sparsity"])  # weights zeroed, a different unit
    (done,) = [m for m in caplog.messages if m.startswith("done:")]
    assert f"sparsity={r['sparsity']:.4f} channel_sparsity={r['channel_sparsity']:.4f}" in done
    dense = compose("trainer.max_epochs=1", "export=false")
    run(dense)
    assert json.loads((Path(dense.output_dir) / "results.json").read_text())["channel_sparsity"] is None


def test_quiet_drops_known_harmless_warnings_and_nothing_else():
    import timm
    import torch
    from pytorch_lightning.utilities._pytree import _tree_flatten

    from sparsetrain.granularity import build_channel_groups
    from sparsetrain.quiet import quiet

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet()
        _tree_flatten(torch.zeros(1))  # Lightning's pytree: torch's LeafSpec deprecation
        vit = timm.create_model("test_vit", pretrained=False, num_classes=4, img_size=32)
        build_channel_groups(vit, torch.zeros(1, 3, 32, 32), set())  # Torch-Pruning: "Unwrapped parameters"
        warnings.warn("a warning of ours", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning of ours"]


def test_quiet_drops_lightning_tips_and_wandb_anonymous_setting(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    from sparsetrain.quiet import quiet, quiet_wandb

    quiet()
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    lightning = logging.getLogger("pytorch_lightning.utilities.rank_zero")  # its own handler: whatever an
    level = lightning.level  # earlier test did to propagation or levels, the filter is what is tested
    lightning.addHandler(handler)
    lightning.setLevel(logging.INFO)
    try:
        pl.Trainer(logger=CSVLogger(tmp_path), enable_progress_bar=False, accelerator="cpu")
    finally:
        lightning.removeHandler(handler)
        lightning.setLevel(level)
    assert records and not [m for m in records if "Tip" in m or "litlogger" in m]
    assert "GPU available" in " ".join(records)  # other Lightning lines still pass
    logger = quiet_wandb(WandbLogger(save_dir=str(tmp_path), offline=True))
    assert "anonymous" not in logger._wandb_init  # wandb warns whenever the key is passed, even as None
    assert quiet_wandb(WandbLogger(save_dir=str(tmp_path), anonymous=True))._wandb_init["anonymous"] == "allow"


@pytest.mark.slow  # a 2-job multirun through train.py: about 35 s on 2 cores
def test_cli_sweep_two_wandb_runs_one_group_a_summary_and_no_noise(tmp_path):
    sweep = tmp_path / "multirun" / "s"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", "seed=0,1", "+pruner=rigl", *TINY, f"hydra.sweep.dir={sweep}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for noise in ("already in progress", "anonymous setting", "💡 Tip", "LeafSpec", "Loading `train_dataloader`"):
        assert noise not in out, noise
    runs = [_wandb_runs(sweep / str(n)) for n in (0, 1)]
    assert [len(r) for r in runs] == [1, 1]
    assert all(b"multirun/s" in r[0].read_bytes() for r in runs)
    assert runs[0][0].name != runs[1][0].name
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["overrides"] for r in rows] == ["seed=0", "seed=1"]
    assert all(float(r["sparsity"]) == pytest.approx(0.9, abs=1e-3) and r["test_acc"] for r in rows)
    assert "sweep summary (2 jobs)" in proc.stdout and f"sweep summary: {sweep / 'summary.csv'}" in proc.stdout
    assert all((sweep / str(n) / "plots" / "training.png").is_file() for n in (0, 1))


# ------------------------------------------------------------------------------------------------ what a new user saw
def _write_run(run_dir: Path, results: dict, rows: list[dict]) -> Path:
    """A finished run directory with `results` and a CSV log of `rows` (Lightning's layout)."""
    (run_dir / "csv").mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(results))
    columns = sorted({k for row in rows for k in row})
    with open(run_dir / "csv" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return run_dir


def _axes(fig) -> dict[str, object]:
    return {ax.get_title().split("\n")[0]: ax for ax in fig.axes if ax.get_title()}


def _line(ax, label: str):
    (line,) = [line for line in ax.get_lines() if line.get_label().startswith(label)]
    return line


CHANNEL_RUN = {  # gmp, granularity=channel, sparsity=0.5: half the channels, 72 % of the weights zeroed
    "pruner": "gmp",
    "model": "resnet20",
    "data": "fake",
    "sparsity": 0.722,
    "channel_sparsity": 0.5,
    "flops_dense": 1000,
    "flops_sparse": 336,
    "steps": 42,
    "test_acc": 0.5,
    "pruner_config": {"key": "gmp", "sparsity": 0.5, "granularity": "channel"},
    "layers": {"conv1": {"density": 0.4}, "conv2": {"density": 0.3}},
}
CHANNEL_ROWS = [  # events at steps 0 and 21 (churn 0: pure pruning), sparsity also at epoch ends
    {"step": 0, "sparsity/global": 0.0, "flops/ratio": 1.0, "mask/churn": 0.0},
    {"step": 13, "epoch": 0, "sparsity/global": 0.0, "val/acc": 0.3},
    {"step": 21, "sparsity/global": 0.722, "flops/ratio": 0.336, "mask/churn": 0.0},
    {"step": 27, "epoch": 1, "sparsity/global": 0.722, "val/acc": 0.4},
    {"step": 30, "epoch": 2, "train/loss": 1.5},
]


def test_plots_draw_a_channel_target_against_channels_and_end_at_the_final_values(tmp_path):
    from matplotlib.colors import to_hex

    from sparsetrain.plots import read_metrics, training_figure

    run_dir = _write_run(tmp_path / "ch", CHANNEL_RUN, CHANNEL_ROWS)
    panels = _axes(training_figure(CHANNEL_RUN, read_metrics(run_dir / "csv" / "metrics.csv")))
    sparsity, flops = panels["sparsity: weights and channels"], panels["FLOPs ratio (sparse / dense)"]
    target = _line(sparsity, "target: channels removed 0.5")  # the target says what it targets...
    channels = _line(sparsity, "channels removed")  # ...and is drawn with that quantity, in its colour
    assert to_hex(target.get_color()) == to_hex(channels.get_color())
    assert tuple(channels.get_xydata()[-1]) == (41, 0.5)  # results.json's value at the last step (steps - 1)
    assert _line(sparsity, "weight sparsity").get_xydata()[-1].tolist() == [41, 0.722]
    assert _line(flops, "FLOPs").get_xydata()[-1].tolist() == [41, pytest.approx(0.336)]  # not stopped at 21
    assert not [t for t in panels if "churn" in t]  # pure pruning: no empty churn panel...
    assert "mask churn 0 at all 2 update events" in sparsity.get_title()  # ...it is said where the sparsity is

    logged = [*CHANNEL_ROWS, {"step": 21, "channel_sparsity": 0.5}]  # a log with the channel series
    run_dir = _write_run(tmp_path / "ch2", CHANNEL_RUN, logged)
    panels = _axes(training_figure(CHANNEL_RUN, read_metrics(run_dir / "csv" / "metrics.csv")))
    curve = _line(panels["sparsity: weights and channels"], "channels removed").get_xydata().tolist()
    assert curve == [[21, 0.5], [41, 0.5]]


def test_plots_lapp_flops_reach_their_final_value_against_the_budget_and_regrowth_keeps_its_churn_panel(tmp_path):
    from sparsetrain.plots import plot_run, read_metrics, training_figure

    lapp = {
        **CHANNEL_RUN,
        "pruner": "lapp",
        "sparsity": 0.787,
        "channel_sparsity": 0.419,
        "flops_sparse": 500,
        "pruner_config": {"key": "lapp", "max_flops_ratio": 0.5, "granularity": "channel", "sparsity": None},
    }
    rows = [{"step": 0, "sparsity/global": 0.0, "flops/ratio": 1.0, "flops/budget": 1.0, "mask/churn": 0.0}]
    run_dir = _write_run(tmp_path / "lapp", lapp, rows)
    panels = _axes(training_figure(lapp, read_metrics(run_dir / "csv" / "metrics.csv")))
    flops = panels["FLOPs ratio (sparse / dense)"]
    assert _line(flops, "FLOPs").get_xydata().tolist() == [[0, 1.0], [41, 0.5]]  # was its step-0 point only
    assert _line(flops, "target: max_flops_ratio 0.5").get_ydata()[0] == 0.5
    assert not [line for line in panels["sparsity: weights and channels"].get_lines() if "target" in line.get_label()]
    assert not [t for t in panels if "churn" in t]

    granet = {**CHANNEL_RUN, "pruner": "granet", "channel_sparsity": None, "sparsity": 0.9}
    granet["pruner_config"] = {"key": "granet", "sparsity": 0.9, "granularity": "unstructured"}
    rows = [{"step": 0, "sparsity/global": 0.0, "mask/churn": 0.0}, {"step": 20, "mask/churn": 0.12}]
    run_dir = _write_run(tmp_path / "granet", granet, rows)
    panels = _axes(training_figure(granet, read_metrics(run_dir / "csv" / "metrics.csv")))
    assert "mask churn" in panels  # GraNet regrew weights: its churn has a panel
    assert "channels removed" not in " ".join(line.get_label() for line in panels["sparsity"].get_lines())
    assert _line(panels["sparsity"], "target sparsity 0.9").get_ydata()[0] == 0.9
    plot_run(run_dir)  # and the files are written

    dense = {"pruner": None, "model": "lenet5", "data": "fake", "steps": 10, "flops_dense": 100, "flops_sparse": 100}
    dense["layers"] = {"conv1": {"density": 1.0}, "fc": {"density": 1.0}}
    run_dir = _write_run(tmp_path / "dense", dense, [{"step": 5, "train/loss": 2.0}, {"step": 9, "val/acc": 0.2}])
    assert list(_axes(training_figure(dense, read_metrics(run_dir / "csv" / "metrics.csv")))) == [
        "training loss and validation accuracy"  # a dense run: nothing else to draw, no empty panels
    ]


def test_help_summaries_keep_et_al_and_hide_internal_groups_and_targets():
    from sparsetrain.cli import first_sentence, summary
    from sparsetrain.pruners import RigL

    assert first_sentence("RigL (Evci et al. 2020): static. Then more.") == "RigL (Evci et al. 2020): static"
    assert first_sentence("SET (Mocanu et al. 2018, Nature): like RigL. Follows x.") == (
        "SET (Mocanu et al. 2018, Nature): like RigL"
    )
    assert first_sentence("Drop by e.g. Magnitude first. Then grow.") == "Drop by e.g. Magnitude first"
    assert summary(RigL).startswith('RigL (Evci et al. 2020, "Rigging the Lottery"')
    proc = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "RigL (Evci et al. 2020," in out and "SET (Mocanu et al. 2018," in out
    groups = out.split("== Config groups")[1].split("\n", 1)[1].split("\n== ")[0]
    assert "pruner: bip" in groups and "pruner_shared" not in groups  # internal: every pruner extends it
    assert "_target_" not in out
    assert "data:\n  root: " in out and "${" not in out  # the config is still shown, resolved
    assert max(len(line) for line in out.split("== Pruners")[1].split("\n\n")[0].splitlines()) <= 110


def test_a_regrowth_method_refuses_channel_granularity_before_any_allocation_advice():
    from sparsetrain.cli import check_command_line
    from sparsetrain.config import CONF_DIR
    from sparsetrain.errors import one_line_error
    from sparsetrain.pruners import SET, GraNet, RigL

    for cls in (RigL, SET, GraNet):
        match = r"prunes single weights or N:M groups only: granularity=channel is not defined for it .*methods for "
        with pytest.raises(ValueError, match=match + r"channel: bip, gmp, imp, lapp, magnitude, pdp\)") as info:
            cls(sparsity=0.9, granularity="channel")
        assert "allocation" not in str(info.value)
    with pytest.raises(Exception) as info:  # noqa: PT011 - train.py prints `one_line_error` of whatever is raised
        check_command_line(["train.py", "+pruner=rigl", "pruner.granularity=channel", "data=fake"], CONF_DIR)
    line = one_line_error(info.value, CONF_DIR)
    assert line.startswith("RigL prunes single weights or N:M groups only") and "\n" not in line


def test_init_from_logs_what_it_loaded(compose, caplog, tmp_path):
    from sparsetrain.app import prepare
    from sparsetrain.init_from import source_kind, source_of

    source = compose("trainer.max_epochs=1", "test=false")
    run(source)
    with caplog.at_level(logging.INFO, logger="sparsetrain"):
        network = prepare(compose("+pruner=magnitude", f"init_from={source.output_dir}"))["network"]
    (line,) = [m for m in caplog.messages if m.startswith("init_from:")]
    tensors = len(network.state_dict())
    assert line == (
        f"init_from: loaded {tensors} tensors ({sum(t.numel() for t in network.state_dict().values())} values) "
        f"from {source.output_dir} (run directory: its export/)"
    )
    export = Path(source.output_dir) / "export"
    assert source_kind(export, source_of(export)) == "export"
    ckpt = Path(source.output_dir) / "checkpoints" / "last.ckpt"
    assert source_kind(ckpt, source_of(ckpt)) == "checkpoint, its finalized network"
    (tmp_path / "no_export" / "checkpoints").mkdir(parents=True)
    (tmp_path / "no_export" / "checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes())
    assert source_kind(tmp_path / "no_export", source_of(tmp_path / "no_export")) == (
        "run directory: its checkpoints/last.ckpt"
    )


def test_the_nm_left_dense_warning_is_short():
    from sparsetrain.granularity import left_dense_text

    skipped = {f"blocks.{i}.0.conv_dw": "input dim not divisible by 4" for i in range(11)}
    text = left_dense_text(skipped, "nm")
    assert text == (
        "sparsetrain: 11 layers left dense (nm: input dim not divisible by 4): "
        "blocks.0.0.conv_dw, blocks.1.0.conv_dw, blocks.2.0.conv_dw ... and 8 more"
    )
    assert left_dense_text({"fc": "input dim not divisible by 4"}, "nm").endswith(
        "left dense (nm: input dim not divisible by 4): fc"
    )


def test_readme_quick_start_says_what_make_train_runs():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start")[1].split("\n## ")[0]
    make_train = (ROOT / "Makefile").read_text().split("\ntrain:")[1].split("\n\n")[0]
    command = make_train.split("train.py", 1)[1].replace("$(ARGS)", "").strip()  # +pruner=granet
    assert f"runs `python train.py {command}`" in " ".join(quick.split())
