import pytest
import torch

from sparsetrain.masking import MaskSet, find_mask_buffers
from sparsetrain.targets import select_targets
from tests.helpers.nets import MLP, ResNetTiny, batches


def _masked_mlp(density: float = 0.5):
    model = MLP()
    masks = MaskSet(model, ["fc1.weight", "fc2.weight"])
    g = torch.Generator().manual_seed(1)
    for fqn in masks.params:
        masks.set(fqn, (torch.rand(masks.masks[fqn].shape, generator=g) < density).float())
    masks.apply_to_weights()
    return model, masks


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
    ],
    ids=["sgd_momentum_wd", "adamw"],
)
def test_masked_weights_stay_exactly_zero_for_50_steps(make_opt):
    model, masks = _masked_mlp()
    opt = make_opt(model.parameters())
    # momentum/Adam state is non-zero everywhere before masking starts: the hardest case for revival
    for x, y in batches(3, (16,)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    masks.apply_to_weights()
    masks.zero_optimizer_state(opt, {fqn: m == 0 for fqn, m in masks.masks.items()})  # as a pruner does at an event
    for x, y in batches(50, (16,), seed=1):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        masks.apply_to_grads()
        opt.step()
        for fqn, m in masks.masks.items():  # before the re-masking: the step itself must leave them at 0
            assert torch.count_nonzero(masks.params[fqn][m == 0]) == 0
        masks.apply_to_weights()
    for fqn, m in masks.masks.items():  # and the active ones did train
        assert torch.count_nonzero(masks.params[fqn][m != 0]) == int(m.sum())


def test_masks_are_buffers_in_state_dict_and_remove_restores_plain_architecture():
    model, masks = _masked_mlp()
    assert "fc1.weight_mask" in model.state_dict()
    assert sorted(find_mask_buffers(model)) == ["fc1.weight", "fc2.weight"]
    masks.remove()
    assert find_mask_buffers(model) == []
    MLP().load_state_dict(model.state_dict(), strict=True)


def test_zero_optimizer_state_only_where_asked():
    model, masks = _masked_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = batches(1, (16,))[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    where = torch.zeros_like(masks.masks["fc1.weight"])
    where[0, :5] = 1
    buf = opt.state[masks.params["fc1.weight"]]["momentum_buffer"]
    before = buf.clone()
    masks.zero_optimizer_state(opt, {"fc1.weight": where})
    assert torch.all(buf[0, :5] == 0)
    assert torch.equal(buf[1:], before[1:])


def test_target_selection_keeps_first_last_and_never_norms():
    model = ResNetTiny()
    assert list(select_targets(model)) == ["conv2", "conv3", "conv4"]
    assert "conv1" in select_targets(model, keep_first_last=False)
    assert list(select_targets(model, exclude=[r"conv[34]"])) == ["conv2"]
    assert list(select_targets(model, include=[r"^fc$"])) == ["fc"]
    with pytest.raises(ValueError, match="no prunable layer selected"):
        select_targets(model, include=["nothing"])
    with pytest.raises(ValueError, match="invalid regular expression"):
        select_targets(model, exclude=["("])
