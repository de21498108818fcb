"""Export: physically smaller channel-pruned models with equal outputs, 2:4 decisions, storage report, checkpoint
export, loading from the two files alone, and no unpickling anywhere."""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file
from torch import nn

import sparsetrain
from sparsetrain.app import run
from sparsetrain.export import export_network, export_run, load_exported, main, storage_report
from sparsetrain.models import build_model
from sparsetrain.pruners import Magnitude
from sparsetrain.restore import finalized_network, load_run_config
from sparsetrain.semi_structured import Target, decide
from sparsetrain.slim import slim
from tests.helpers.config import CONF_DIR, FAST
from tests.helpers.nets import MLP, ResNetTiny, batches, train_plain

X_TINY = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _randomize_bn_stats(model: nn.Module) -> None:
    """Running statistics far from (0, 1), so a BN channel that is wrongly removed or kept shows in the outputs."""
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _pruned(model: nn.Module, granularity: str, shape: tuple[int, ...], classes: int = 4) -> tuple[nn.Module, object]:
    """A model pruned by a real pruner in a real (two-step) training loop; masks still attached."""
    pruner = Magnitude(sparsity=None if granularity == "nm" else 0.5, granularity=granularity, begin=0.0)
    pruner.attach(model, 2, torch.zeros(1, *shape))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_plain(model, pruner, opt, batches(2, shape, classes=classes, batch=4), 2)
    return model, pruner


@torch.no_grad()
def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------- slim


def test_slim_removes_exactly_the_channels_whose_every_coupled_entry_is_zero():
    net = ResNetTiny(width=8).eval()
    _randomize_bn_stats(net)
    with torch.no_grad():
        for p in (net.conv2.weight, net.bn2.weight, net.bn2.bias):
            p[[1, 3]] = 0  # conv2 channels 1, 3: producer, BN weight and bias ...
        net.conv3.weight[:, [1, 3]] = 0  # ... and the consumer's columns: removable
        net.conv4.weight[0] = 0  # conv4 channel 0: filter zero but bn4's bias is not, so it outputs a constant
        net.bn4.weight[0] = 0
    ref = _out(net, X_TINY)
    result = slim(net, torch.zeros(1, 3, 8, 8))
    assert [(r.root, r.indices) for r in result.removals] == [("conv2", [1, 3])]
    assert result.refused == []  # nothing was found that the equality check had to refuse
    slim_net = result.model
    assert slim_net.conv2.out_channels == 6 and slim_net.bn2.num_features == 6 and slim_net.conv3.in_channels == 6
    assert slim_net.conv4.out_channels == 16 and net.conv2.out_channels == 8  # input network untouched
    torch.testing.assert_close(_out(slim_net, X_TINY), ref, rtol=1e-5, atol=1e-6)


def test_a_group_with_every_channel_zero_keeps_one():
    net = ResNetTiny(width=8).eval()
    _randomize_bn_stats(net)
    with torch.no_grad():
        for p in (net.conv2.weight, net.bn2.weight, net.bn2.bias):
            p.zero_()
        net.conv3.weight.zero_()
    ref = _out(net, X_TINY)
    result = slim(net, torch.zeros(1, 3, 8, 8))
    assert [(r.root, r.indices) for r in result.removals] == [("conv2", list(range(1, 8)))]
    assert result.model.conv2.out_channels == result.model.conv3.in_channels == 1  # still a network
    torch.testing.assert_close(_out(result.model, X_TINY), ref, rtol=1e-5, atol=1e-6)


def test_a_removal_that_would_break_the_model_is_refused(tmp_path):
    """Attention's qkv outputs are reshaped into heads: the graph lets their channels go, the forward does not."""
    torch.manual_seed(0)
    arch = {"source": "timm", "name": "test_vit", "in_chans": 3, "num_classes": 4, "image_size": 32, "kwargs": {}}
    model, pruner = _pruned(build_model(**{k: v for k, v in arch.items() if k != "kwargs"}), "channel", (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    masked = _out(model, x)
    pruner.finalize()
    spec = export_network(model, tmp_path, input_shape=(3, 32, 32), arch=arch)
    assert spec["removed_channels"] and spec["params"] < spec["params_dense"]  # the MLP hidden channels go
    assert any(r["root"].endswith("qkv") for r in spec["kept_zero_channels"])  # the heads' channels stay (zeros)
    torch.testing.assert_close(_out(load_exported(tmp_path), x), masked, rtol=1e-4, atol=1e-5)


def test_channel_pruned_export_is_smaller_and_equals_the_masked_model(tmp_path):
    model, pruner = _pruned(ResNetTiny(width=8), "channel", (3, 8, 8))
    _randomize_bn_stats(model)
    masked = _out(model, X_TINY)  # masks still attached: the model as trained
    pruner.finalize()
    model.train()
    spec = export_network(model, tmp_path / "full", input_shape=(3, 8, 8))
    only = tmp_path / "only"
    only.mkdir()
    for name in ("model.json", "model.safetensors"):  # the two files alone, nothing else around them
        shutil.copy(tmp_path / "full" / name, only / name)
    loaded = load_exported(only, model=ResNetTiny(width=8))
    assert _params(loaded) == spec["params"] < _params(model) == spec["params_dense"]
    assert spec["flops"] < spec["flops_dense"] and spec["removed_channels"]
    torch.testing.assert_close(_out(loaded, X_TINY), masked, rtol=1e-5, atol=1e-6)
    assert not loaded.training
    assert model.conv2.out_channels == 8 and model.training  # exporting leaves the given network as it was


# ------------------------------------------------------------------------------------------- each family

FAMILIES = [
    ("builtin", "resnet20", 1, 16),
    ("timm", "mobilenetv3_small_050", 1, 28),  # depthwise convs, squeeze-excitation
    ("torchvision", "squeezenet1_1", 3, 32),  # concatenations
]


@pytest.mark.parametrize("granularity", ["channel", "nm", "unstructured"])
@pytest.mark.parametrize(("source", "name", "chans", "size"), FAMILIES, ids=[f"{f[1]}@{f[0]}" for f in FAMILIES])
def test_export_and_load_equal_the_masked_model_for_each_family(tmp_path, source, name, chans, size, granularity):
    torch.manual_seed(0)
    arch = {"source": source, "name": name, "in_chans": chans, "num_classes": 4, "image_size": size, "kwargs": {}}
    model = build_model(source, name, in_chans=chans, num_classes=4, image_size=size)
    model, pruner = _pruned(model, granularity, (chans, size, size))
    x = torch.randn(3, chans, size, size)
    masked = _out(model, x)
    pruner.finalize()
    spec = export_network(model, tmp_path, input_shape=(chans, size, size), arch=arch)
    loaded = load_exported(tmp_path)  # rebuilt by the builder model.json names
    torch.testing.assert_close(_out(loaded, x), masked, rtol=1e-4, atol=1e-5)
    if granularity == "channel":
        assert _params(loaded) == spec["params"] < spec["params_dense"] and spec["flops"] < spec["flops_dense"]
    else:
        assert _params(loaded) == spec["params"] == spec["params_dense"] and spec["flops"] == spec["flops_dense"]
        assert spec["removed_channels"] == []


# ------------------------------------------------------------------------------------------- 2:4


CPU32 = Target("cpu", None, torch.float32, False)
A100_16 = Target("cuda", (8, 0), torch.float16, True)


def _two_four(rows: int, cols: int) -> nn.Linear:
    layer = nn.Linear(cols, rows)
    with torch.no_grad():
        layer.weight.view(-1, 4)[:, 2:] = 0
    return layer


@pytest.mark.parametrize(
    ("module", "target", "expected"),
    [
        (_two_four(64, 64), A100_16, "semi_structured (cusparselt)"),
        (_two_four(64, 64), Target("cuda", (9, 0), torch.bfloat16, True), "semi_structured (cusparselt)"),
        (_two_four(64, 64), Target("cuda", (8, 6), torch.float16, False), "semi_structured (cutlass)"),
        (_two_four(64, 64), CPU32, "dense (device cpu: semi-structured kernels are CUDA-only)"),
        (_two_four(64, 64), Target("cuda", None, torch.float16, False), "dense (no CUDA device available here)"),
        (_two_four(64, 64), Target("cuda", (7, 5), torch.float16, True), "dense (compute capability 7.5 < 8.0)"),
        (_two_four(64, 64), Target("cuda", (9, 0), torch.float16, False), "dense (compute capability 9.0: CUTLASS"),
        (_two_four(64, 64), Target("cuda", (8, 0), torch.float32, True), "dense (dtype float32: needs float16"),
        (_two_four(8, 64), A100_16, "dense (shape 8x64: cusparselt needs multiples of 16x16)"),
        (_two_four(32, 32), Target("cuda", (8, 0), torch.float16, False), "dense (shape 32x32: cutlass needs"),
        (nn.Linear(64, 64), A100_16, "dense (weight is not 2:4 sparse)"),
        (nn.Conv2d(8, 8, 3), A100_16, "dense (not a Linear"),
    ],
)
def test_semi_structured_decision(module, target, expected):
    assert decide(module, target).startswith(expected)


def test_nm_export_reports_each_linear_and_stays_dense_on_this_cpu(tmp_path):
    model, pruner = _pruned(MLP(d_in=16, hidden=32), "nm", (16,))
    x = torch.randn(4, 16)
    masked = _out(model, x)
    targets = sorted(pruner.targets)
    pruner.finalize()
    spec = export_network(model, tmp_path, input_shape=(16,))
    layers = spec["semi_structured"]["layers"]
    assert sorted(layers) == targets == ["fc1", "fc2"]
    assert all(d.startswith("dense (device cpu") for d in layers.values())
    assert "no speedup" in spec["speedup"]
    storage = spec["storage"]
    assert (
        storage["sparse_tensors"]["fc1.weight"]["density"] == 0.5 and storage["bitmask_bytes"] < storage["dense_bytes"]
    )
    torch.testing.assert_close(_out(load_exported(tmp_path, model=MLP(d_in=16, hidden=32)), x), masked)


@pytest.mark.gpu
def test_two_four_linears_run_semi_structured_on_a_gpu(tmp_path):
    model = nn.Sequential(_two_four(128, 64), nn.ReLU(), _two_four(64, 128))
    spec = export_network(model, tmp_path, input_shape=(64,))
    assert len(spec["semi_structured"]["layers"]) == 2
    x = torch.randn(32, 64, device="cuda", dtype=torch.float16)
    dense = load_exported(tmp_path, model=nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64)))
    dense = dense.to("cuda", torch.float16)
    fresh = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
    sparse = load_exported(tmp_path, model=fresh, device="cuda", dtype=torch.float16)
    assert type(sparse[0].weight.data).__name__.startswith("SparseSemiStructuredTensor")
    torch.testing.assert_close(_out(sparse, x), _out(dense, x), rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------------------------------- unstructured


def test_storage_report_counts_csr_and_bitmask_bytes():
    w = torch.zeros(4, 8)
    w[0, 1], w[2, 3], w[3, 7] = 1.0, 2.0, 3.0
    report = storage_report({"w": w, "b": torch.ones(4)})
    assert report["dense_bytes"] == 4 * 32 + 16
    assert report["csr_bytes"] == 3 * (4 + 4) + 5 * 4 + 16  # values + int32 columns + int32 row pointers, bias dense
    assert report["bitmask_bytes"] == 3 * 4 + 4 + 16  # values + 32 bits
    assert report["best_format"] == "bitmask" and report["best_saving"] == pytest.approx(1 - 32 / 144)


def test_unstructured_export_keeps_its_zeros_and_claims_no_speedup(tmp_path):
    model, pruner = _pruned(MLP(), "unstructured", (16,))
    zeros = sum(int((p == 0).sum()) for p in model.parameters())
    pruner.finalize()
    spec = export_network(model, tmp_path, input_shape=(16,))
    assert spec["params"] == spec["params_dense"] and spec["params"] - spec["params_nonzero"] == zeros > 0
    assert spec["flops"] == spec["flops_dense"] and spec["speedup"].startswith("none")
    assert spec["storage"]["bitmask_bytes"] < spec["storage"]["dense_bytes"]
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert sum(int((t == 0).sum()) for t in stored.values()) == zeros


def test_onnx_is_optional(tmp_path):
    import importlib.util

    spec = export_network(MLP(), tmp_path, input_shape=(16,), onnx=True)
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None:
        assert spec["onnx"].startswith("skipped") and not (tmp_path / "model.onnx").exists()
    else:
        assert spec["onnx"] == "model.onnx" and (tmp_path / "model.onnx").stat().st_size > 0


# ------------------------------------------------------------------------------------------- runs and checkpoints


def _train_run(root: Path, *overrides: str) -> Path:
    """A real `app.run` (one epoch) with the run config saved as Hydra saves it (`.hydra/config.yaml`)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*FAST, "trainer.max_epochs=1", *overrides])
    with open_dict(cfg):
        cfg.output_dir = str(root)
    (root / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, root / ".hydra" / "config.yaml")
    run(cfg)
    return root


@pytest.fixture(scope="module")
def unstructured_run(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return _train_run(
        tmp_path_factory.mktemp("unstructured") / "run", "+pruner=gmp", "pruner.sparsity=0.8", "pruner.update_every=2"
    )


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return _train_run(
        tmp_path_factory.mktemp("channel") / "run",
        "model=resnet20",
        "+pruner=gmp",
        "pruner.granularity=channel",
        "pruner.sparsity=0.5",
        "pruner.update_every=2",
    )


def test_run_export_is_smaller_and_matches_results_json(channel_run):
    results = json.loads((channel_run / "results.json").read_text())
    spec = json.loads((channel_run / "export" / "model.json").read_text())
    # the masks zeroed params_total - params_nonzero entries: exactly those are gone
    assert spec["params"] == results["params_nonzero"] < results["params_total"] == spec["params_dense"]
    assert abs(spec["flops"] - results["flops_sparse"]) <= 1 and spec["flops_dense"] == results["flops_dense"]
    assert spec["arch"] == {
        "source": "builtin", "name": "resnet20", "in_chans": 1, "num_classes": 10, "image_size": 16, "kwargs": {}
    }  # fmt: skip
    assert spec["granularity"] == "channel" and spec["pruner"] == "gmp"


def test_checkpoint_export_equals_end_of_run_export(channel_run, tmp_path):
    assert main([str(channel_run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path)]) == 0
    ours, theirs = (load_file(str(d / "model.safetensors")) for d in (tmp_path, channel_run / "export"))
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    spec_ckpt, spec_run = (json.loads((d / "model.json").read_text()) for d in (tmp_path, channel_run / "export"))
    assert spec_ckpt["removed_channels"] == spec_run["removed_channels"]
    assert main([str(channel_run / "checkpoints" / "best.ckpt"), "--out", str(tmp_path / "best")]) == 0
    assert _params(load_exported(tmp_path / "best")) < spec_run["params_dense"]  # a chosen checkpoint exports too


def test_loaded_export_equals_the_finalized_checkpoint_network(channel_run, tmp_path):
    for name in ("model.json", "model.safetensors"):
        shutil.copy(channel_run / "export" / name, tmp_path / name)
    network, _, key, _ = finalized_network(channel_run / "checkpoints" / "last.ckpt", load_run_config(channel_run))
    loaded = sparsetrain.load_exported(tmp_path)
    x = torch.randn(4, 1, 16, 16)
    assert key == "gmp" and _params(loaded) < _params(network)
    torch.testing.assert_close(_out(loaded, x), _out(network, x), rtol=1e-4, atol=1e-5)


def test_pdp_checkpoint_is_finalized_like_the_run(tmp_path):
    run_dir = _train_run(
        tmp_path / "run", "+pruner=pdp", "pruner.sparsity=0.8", "pruner.warmup=0.1", "pruner.finetune=0.0"
    )
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(".parametrizations.weight.original" in k for k in state)  # what a naive fold would read
    out = export_run(run_dir / "checkpoints" / "last.ckpt", out=tmp_path / "from_ckpt").directory
    ours, theirs = (load_file(str(d / "model.safetensors")) for d in (out, run_dir / "export"))
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0, msg=k)


class Smuggled:
    """Any class: unpickling it would run arbitrary code paths."""


def test_nothing_is_unpickled(channel_run, tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    export_run(channel_run, out=tmp_path / "a")  # a run directory: its last.ckpt
    assert calls == [True]
    load_exported(tmp_path / "a")
    assert calls == [True]  # loading an export reads JSON and safetensors only
    ckpt = real_load(channel_run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["callbacks"]["smuggled"] = Smuggled()
    bad = tmp_path / "run" / "checkpoints" / "last.ckpt"
    bad.parent.mkdir(parents=True)
    shutil.copytree(channel_run / ".hydra", tmp_path / "run" / ".hydra")
    torch.save(ckpt, bad)
    with pytest.raises(ValueError, match="cannot be read weights-only"):
        export_run(bad, out=tmp_path / "b")


def test_cli_on_a_run_without_config_is_one_clear_line(unstructured_run, tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(unstructured_run / "checkpoints" / "last.ckpt", tmp_path / "checkpoints" / "last.ckpt")
    assert main([str(tmp_path)]) == 2
    assert "config.yaml not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- the command line


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _files(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each file's inode, modification time and bytes: a rewrite with equal bytes still shows."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("kind", ["unstructured", "channel"])
def test_cli_export_of_a_run_directory_equals_the_runs_own_export(kind, request, tmp_path, capsys):
    run_dir = request.getfixturevalue(f"{kind}_run")
    code, out, err = _cli(capsys, run_dir, "--out", tmp_path / "fresh")
    assert code == 0 and err == ""  # no note: last.ckpt is the run's last step
    assert f"exported to {tmp_path / 'fresh'} from {run_dir / 'checkpoints' / 'last.ckpt'} (step " in out
    ours, theirs = _tensors(tmp_path / "fresh"), _tensors(run_dir / "export")
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k].shape == theirs[k].shape and torch.equal(ours[k] != 0, theirs[k] != 0), k  # same non-zeros
    spec_ours, spec_run = (json.loads((d / "model.json").read_text()) for d in (tmp_path / "fresh", run_dir / "export"))
    assert spec_ours["removed_channels"] == spec_run["removed_channels"]
    assert bool(spec_run["removed_channels"]) == (kind == "channel")
    x = torch.randn(6, *spec_run["input_shape"], generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        _out(load_exported(tmp_path / "fresh"), x), _out(load_exported(run_dir / "export"), x), rtol=1e-5, atol=1e-6
    )


def test_an_identical_export_is_left_alone(unstructured_run, tmp_path, capsys):
    run_dir = Path(shutil.copytree(unstructured_run, tmp_path / "run"))
    before = _files(run_dir / "export")
    code, out, err = _cli(capsys, run_dir)
    assert code == 0 and err == ""
    assert out.strip() == (
        f"{run_dir / 'export'} already holds this export of {run_dir / 'checkpoints' / 'last.ckpt'} "
        f"(step {json.loads((run_dir / 'results.json').read_text())['steps']}): identical weights, left as it is"
    )
    assert _files(run_dir / "export") == before  # not even rewritten


def _other_weights(directory: Path) -> None:
    """The same architecture with one weight changed."""
    from safetensors.torch import save_file

    tensors = _tensors(directory)
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.ndim > 1)
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "sparsetrain-export", "version": "1"})


@pytest.mark.parametrize(
    ("other", "reason"),
    [("channel_run", "its model.json has another arch"), ("weights", "1 of 10 tensors differ, first ")],
    ids=["other-architecture", "other-weights"],
)
def test_a_different_export_is_replaced_only_with_force(unstructured_run, request, tmp_path, capsys, other, reason):
    target = tmp_path / "export"
    if other == "weights":
        shutil.copytree(unstructured_run / "export", target)
        _other_weights(target)
    else:
        shutil.copytree(request.getfixturevalue(other) / "export", target)
    (target / "model.onnx").write_bytes(b"an ONNX file of the network being replaced")
    before = _files(target)
    code, out, err = _cli(capsys, unstructured_run, "--out", target)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {target} already holds an export of a different network ({reason}")
    assert err.rstrip().endswith("pass --force to replace it") and len(err.strip().splitlines()) == 1
    assert _files(target) == before  # untouched

    code, out, err = _cli(capsys, unstructured_run, "--out", target, "--force")
    assert code == 0 and out.startswith(f"replaced the export in {target} from ")
    ours, theirs = _tensors(target), _tensors(unstructured_run / "export")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not (target / "model.onnx").exists()  # it described the network that was replaced


def test_a_last_checkpoint_older_than_the_run_is_named(unstructured_run, tmp_path, capsys):
    """A `last.ckpt` that is not the run's last step (Lightning's own `save_last` rewrote it only with a new best
    `val/acc`) exports another network than the run's own: the run's export is kept, and the line says why."""
    run_dir = Path(shutil.copytree(unstructured_run, tmp_path / "run"))
    results = json.loads((run_dir / "results.json").read_text())
    step = results["steps"]
    results["steps"] = step + 6
    (run_dir / "results.json").write_text(json.dumps(results))
    _other_weights(run_dir / "export")  # what the run's own end would have exported: another network
    stale = f"{run_dir / 'checkpoints' / 'last.ckpt'} is at step {step} but the run ended at step {step + 6}"
    code, _, err = _cli(capsys, run_dir)
    assert code == 2 and "already holds an export of a different network" in err and stale in err
    code, _, err = _cli(capsys, run_dir, "--out", tmp_path / "fresh")
    assert code == 0 and err.startswith(f"note: {stale}")


def test_exported_files_follow_the_umask(tmp_path):
    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        old = os.umask(umask)
        try:
            export_network(MLP(), tmp_path / oct(umask), input_shape=(16,))
        finally:
            os.umask(old)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / oct(umask)).iterdir()}
        assert modes == {"model.json": mode, "model.safetensors": mode}


BAD_SOURCES = {  # path relative to the test's folder -> what the one line must say
    "runs/nonexistent": "runs/nonexistent does not exist",
    "run/results.json": "run/results.json is a run's results.json, not a checkpoint: pass the run directory (run)",
    "run/export/model.safetensors": "run/export/model.safetensors is an export's model.safetensors, not a checkpoint",
    "run/export/model.json": "run/export/model.json is an export's model.json, not a checkpoint",
    "run/export": "run/export is an export directory (model.safetensors + model.json), not a checkpoint",
    "run/.hydra/config.yaml": "run/.hydra/config.yaml is a run's Hydra config (.hydra/config.yaml), not a checkpoint",
    "notes.yaml": "notes.yaml is a YAML file, not a checkpoint: pass the run directory or a .ckpt",
    "empty": "empty is a directory but not a run directory (no .hydra/config.yaml, no checkpoints/)",
    "unfinished": "unfinished is a run directory without checkpoints/last.ckpt (checkpoints/ holds best.ckpt)",
    "weights.ckpt": "weights.ckpt is a torch.save file without a state_dict (not a Lightning checkpoint)",
}

CLI_WITHOUT_TORCH = """
import json, sys
from sparsetrain.export import main
codes = {arg: main([arg]) for arg in json.loads(sys.argv[1])}
print(json.dumps({"codes": codes, "torch": "torch" in sys.modules, "lightning": "pytorch_lightning" in sys.modules}))
"""


def test_a_bad_source_is_one_line_before_torch_is_loaded(unstructured_run, tmp_path):
    """Each wrong path: exit 2 and one `error:` line, answered without importing torch (about 0.3 s, not 10)."""
    import subprocess
    import sys

    shutil.copytree(unstructured_run, tmp_path / "run", ignore=shutil.ignore_patterns("*.ckpt", "csv"))
    (tmp_path / "notes.yaml").write_text("a: 1\n")
    (tmp_path / "empty").mkdir()
    shutil.copytree(unstructured_run / ".hydra", tmp_path / "unfinished" / ".hydra")
    (tmp_path / "unfinished" / "checkpoints").mkdir()
    shutil.copy(unstructured_run / "checkpoints" / "best.ckpt", tmp_path / "unfinished" / "checkpoints")
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "weights.ckpt")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run(
        [sys.executable, "-c", CLI_WITHOUT_TORCH, json.dumps(list(BAD_SOURCES))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"] == dict.fromkeys(BAD_SOURCES, 2)
    assert not result["torch"] and not result["lightning"]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == len(BAD_SOURCES)
    for line, expected in zip(lines, BAD_SOURCES.values(), strict=True):
        assert line.startswith(f"error: {expected}"), line
    module = subprocess.run(
        [sys.executable, "-m", "sparsetrain.export", "runs/nonexistent"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert module.returncode == 2 and module.stderr == "error: runs/nonexistent does not exist\n"


def test_reading_a_file_that_is_no_checkpoint_names_it(unstructured_run):
    cfg = load_run_config(unstructured_run)
    with pytest.raises(ValueError, match=r"results.json is a run's results.json, not a checkpoint"):
        finalized_network(unstructured_run / "results.json", cfg)


def test_a_checkpoint_restores_only_under_the_settings_it_was_trained_with(unstructured_run):
    """Restoring goes the callback's resume path: a config whose pruner settings differ from the recorded ones is
    refused by name, as a resumed fit refuses it, instead of finalizing under another schedule."""
    cfg = load_run_config(unstructured_run)
    cfg.pruner.sparsity = 0.5
    with pytest.raises(ValueError, match=r"other settings \(sparsity: 0.8 in the checkpoint, 0.5 now"):
        finalized_network(unstructured_run / "checkpoints" / "last.ckpt", cfg)


# ------------------------------------------------------------------------------------------- broken exports


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    model, pruner = _pruned(ResNetTiny(width=8), "channel", (3, 8, 8))
    pruner.finalize()
    directory = tmp_path_factory.mktemp("export")
    export_network(model, directory, input_shape=(3, 8, 8))
    return directory


def _edit_spec(directory: Path, change) -> None:
    spec = json.loads((directory / "model.json").read_text())
    change(spec)
    (directory / "model.json").write_text(json.dumps(spec))


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        (
            lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
            ValueError,
            "corrupted",
        ),
        (
            lambda d: _edit_spec(d, lambda s: s.update(removed_channels=s["removed_channels"][1:])),
            ValueError,
            "does not match the architecture",
        ),
        (
            lambda d: _edit_spec(d, lambda s: s["removed_channels"][0].update(root="nope")),
            ValueError,
            "not a prunable layer",
        ),
        (lambda d: _edit_spec(d, lambda s: s["removed_channels"][0].update(indices=[999])), ValueError, "do not fit"),
        (lambda d: _edit_spec(d, lambda s: s.update(format="other")), ValueError, "not a sparsetrain export"),
        (lambda d: _edit_spec(d, lambda s: s.update(version=99)), ValueError, "export version 99"),
        (lambda d: (d / "model.json").write_text("{"), ValueError, "not valid JSON"),
        (lambda d: (d / "model.safetensors").unlink(), FileNotFoundError, "needs model.json and model.safetensors"),
    ],
    ids=["truncated", "removal-missing", "unknown-layer", "bad-index", "format", "version", "json", "missing"],
)
def test_a_corrupted_or_mismatched_export_fails_clearly(exported, tmp_path, damage, error, match):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    damage(broken)
    with pytest.raises(error, match=match):
        load_exported(broken, model=ResNetTiny(width=8))


def test_a_custom_architecture_needs_the_model_argument(exported):
    with pytest.raises(ValueError, match="pass model="):
        load_exported(exported)
    assert _params(load_exported(exported, model=ResNetTiny(width=8))) < _params(ResNetTiny(width=8))


def test_exporting_a_masked_network_is_refused(tmp_path):
    model, _ = _pruned(MLP(), "unstructured", (16,))
    with pytest.raises(ValueError, match="finalize the pruner"):
        export_network(model, tmp_path, input_shape=(16,))
