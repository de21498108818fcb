import copy

import pytest
import torch
import torch_pruning as tp

from sparsetrain.allocation import erk_densities, global_keep_counts, keep_counts, uniform_densities
from sparsetrain.granularity import build_channel_groups, nm_group_view, nm_mask, nm_ungroup, topk_mask
from sparsetrain.models import build_model
from sparsetrain.targets import select_targets
from tests.helpers.nets import ResNetTiny


def test_topk_mask_is_exact_with_ties():
    scores = torch.zeros(10, 10)  # all tied
    assert int(topk_mask(scores, 37).sum()) == 37
    scores = torch.arange(100.0).reshape(10, 10)
    assert torch.equal(topk_mask(scores, 5).reshape(-1).nonzero().squeeze(), torch.arange(95, 100))


@pytest.mark.parametrize("shape", [(8, 16), (4, 8, 3, 3)])
def test_nm_view_round_trips_and_groups_run_along_inputs(shape):
    w = torch.randn(shape)
    assert torch.equal(nm_ungroup(nm_group_view(w, 4), w.shape), w)
    mask = nm_mask(w.abs(), 2, 4)
    assert torch.all(nm_group_view(mask, 4).sum(1) == 2)
    if len(shape) == 2:  # Linear: 4 consecutive weights of a row
        assert torch.all(mask.reshape(8, 4, 4).sum(-1) == 2)
    else:  # conv: 4 consecutive input channels at one kernel position
        assert torch.all(mask.permute(0, 2, 3, 1).reshape(-1, 4).sum(-1) == 2)


def test_nm_incompatible_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible by 4"):
        nm_mask(torch.randn(8, 6), 2, 4)


def _channel_masks(model, example, keep_fraction=0.5):
    targets = set(select_targets(model))
    groups = build_channel_groups(model, example, targets)
    params = dict(model.named_parameters())
    masks = {p: torch.ones_like(params[p]) for g in groups for p in g.group_params()}
    pruned = []
    for g in groups:
        keep = topk_mask(g.scores(params), max(1, round(keep_fraction * g.size)))
        g.expand(keep, masks)
        pruned.append((g, (~keep).nonzero().squeeze(1).tolist()))
    return groups, masks, pruned


@pytest.mark.parametrize(
    ("source", "name", "chans", "size"),
    [
        ("tiny", "", 3, 8),
        ("builtin", "resnet20", 1, 28),
        ("torchvision", "resnet18", 3, 32),
        ("timm", "mobilenetv3_small_050", 3, 32),
    ],
)
def test_channel_masks_equal_physical_removal(source, name, chans, size):
    torch.manual_seed(0)
    model = (
        ResNetTiny() if source == "tiny" else build_model(source, name, in_chans=chans, num_classes=10, image_size=size)
    )
    model.eval()
    for m in model.modules():  # non-trivial BN statistics, so a wrong BN slice would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    example = torch.randn(2, chans, size, size)
    groups, masks, pruned = _channel_masks(model, example[:1])
    assert groups, "expected prunable channel groups"
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for fqn, p in masked.named_parameters():
            if fqn in masks:
                p.mul_(masks[fqn])
    physical = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(physical, example_inputs=example[:1])
    modules = dict(physical.named_modules())
    for g, idxs in pruned:
        if idxs:
            root = modules[g.name]
            graph.get_pruning_group(
                root,
                tp.prune_linear_out_channels if isinstance(root, torch.nn.Linear) else tp.prune_conv_out_channels,
                idxs=idxs,
            ).prune()
    with torch.no_grad():
        assert torch.allclose(masked(example), physical(example), atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in physical.parameters()) < sum(p.numel() for p in model.parameters())


def test_residual_adds_share_one_channel_mask():
    model = ResNetTiny()
    groups, masks, _ = _channel_masks(model, torch.zeros(1, 3, 8, 8))
    # conv1 (stem) is kept dense, so the residual stream conv1+conv3 is not pruned; conv2 and conv4 are
    assert sorted(g.name for g in groups) == ["conv2", "conv4"]
    model2 = ResNetTiny()
    targets = set(select_targets(model2, keep_first_last=False))
    groups = build_channel_groups(model2, torch.zeros(1, 3, 8, 8), targets)
    stream = next(g for g in groups if "conv3" in g.producers)
    assert set(stream.producers) == {"conv1", "conv3"}  # coupled by the add
    params = dict(model2.named_parameters())
    masks = {p: torch.ones_like(params[p]) for p in stream.group_params()}
    stream.expand(topk_mask(stream.scores(params), 4), masks)
    zero_rows = [
        set((masks[f"{c}.weight"].reshape(8, -1).sum(1) == 0).nonzero().squeeze(1).tolist()) for c in ("conv1", "conv3")
    ]
    assert zero_rows[0] == zero_rows[1] and len(zero_rows[0]) == 4
    assert torch.equal(masks["bn1.weight"] == 0, masks["bn3.weight"] == 0)


def test_allocations_are_exact():
    shapes = {"a": torch.Size([8, 3, 3, 3]), "b": torch.Size([64, 64, 3, 3]), "c": torch.Size([10, 64])}
    numels = {k: s.numel() for k, s in shapes.items()}
    dens = erk_densities(shapes, 0.9)
    assert dens["a"] == 1.0  # the tiny first layer would exceed density 1: made dense, epsilon re-solved
    counts = keep_counts(dens, numels)
    assert sum(counts.values()) == round(0.1 * sum(numels.values()))
    assert erk_densities(shapes, 0.9, power_scale=0.0) == pytest.approx(uniform_densities(numels, 0.9))
    scores = {"x": torch.tensor([5.0, 1.0, 1.0, 1.0]), "y": torch.tensor([1.0, 1.0, 9.0, 0.0])}
    counts = global_keep_counts(scores, 0.5)  # 9 and 5 win, then 2 of the five tied 1.0s: exactly 4 in all
    assert sum(counts.values()) == 4 and counts["x"] >= 1 and counts["y"] >= 1
    assert global_keep_counts({"x": torch.arange(10.0), "y": torch.arange(10.0) + 100}, 0.5) == {"x": 0, "y": 10}
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        uniform_densities(numels, 1.0)
