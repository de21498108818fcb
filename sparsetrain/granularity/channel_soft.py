"""Channel masks in the forward: PDP's soft mask for coupled channel groups (filter norms as magnitudes), and
any method's own per-channel masks (LAPP's straight-through thresholds) through the same hook.

Each group's channel score is the mean squared weight of its coupled producer filters, s_c², computed in
every forward pass *with* autograd (a forward pre-hook on the network), so gradients reach every filter
through both the mask and the weights, as in the unstructured case. The mask m_c = σ((s_c² − t²)/τ)
multiplies every output-side slice of the group (producer rows and biases, BN weight and bias), which scales
each channel's output whether or not a normalisation layer follows. τ is the pruner's current temperature
times the spread of the group's s_c² (see `PDP`): `inv_tau[i]` holds 1/(τ·spread) at the nominal τ, and
`gain` the annealing factor τ/τ(step) shared by every group.

The network gets only the parametrizations and one pre-forward hook, never a module of ours: a child
registered on a user's `nn.Sequential` would become one of its layers. The thresholds live in a
`ChannelMaskState` that `ChannelSoftMasks` (PDP) or the method itself (LAPP) holds, saved in the pruner's state.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsetrain.granularity.base import topk_mask
from sparsetrain.granularity.channel_groups import ChannelGroup, ParamSlice, normalize_group_scores
from sparsetrain.granularity.soft import spread, threshold_between
from sparsetrain.masking import resolve

if TYPE_CHECKING:
    from sparsetrain.masking import MaskSet


class ChannelMaskState:
    """Per-group thresholds and the masks of the current forward, held by the pruner.

    Not a module, and never registered on the network: a child added to a user's `nn.Sequential` becomes one
    of its layers (and has no forward). The network carries only the parametrizations on the layers the
    groups scale and one pre-forward hook; the thresholds are saved in the pruner's state (`state_dict`).
    Plain floats: they follow no device and are converted to each score's dtype where they are used.

    A compiled forward reads them from `scalars` instead, one tensor `[t2..., inv_tau..., gain]` that `publish`
    rebuilds whenever they change: `torch.compile` guards a Python float on its value (a recompile at every
    threshold refresh and annealing step, then the recompile limit and eager), a tensor on its metadata only.
    """

    def __init__(self, sizes: list[int], thresholds: bool = True) -> None:
        count = len(sizes) if thresholds else 0  # PDP's; a method computing masks itself has none
        self.t2: list[float] = [0.0] * count
        self.inv_tau: list[float] = [1.0] * count
        self.gain = 1.0  # the annealing factor; the pruner saves it in its own state
        self.enabled = False
        self.current: list[torch.Tensor] = []
        self.hooks: list[Any] = []
        self.scalars: torch.Tensor | None = None  # what a compiled forward reads; None: not published (floats)

    def publish(self, device: torch.device) -> None:
        """Mirror the thresholds and the gain into `scalars` on `device` (a new tensor: no recompile)."""
        self.scalars = torch.tensor([*self.t2, *self.inv_tau, self.gain], dtype=torch.float32, device=device)

    def set_gain(self, gain: float) -> None:
        self.gain = gain
        if self.scalars is not None:
            self.scalars[-1].fill_(gain)  # in place: no host sync, no recompile

    def state_dict(self) -> dict[str, list[float]]:
        return {"t2": list(self.t2), "inv_tau": list(self.inv_tau)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        for key in ("t2", "inv_tau"):
            values = [float(v) for v in state[key]]
            if len(values) != len(getattr(self, key)):
                raise ValueError(
                    f"the checkpoint holds {len(values)} channel-group thresholds, this network has "
                    f"{len(getattr(self, key))}: resume into the same model and pruner settings"
                )
            setattr(self, key, values)
        self.scalars = None  # stale until the next `publish` (the pruner's next threshold refresh)


class ChannelSoftMask(nn.Module):
    """Parametrization multiplying rows `index` (along `dim`) by their group channel's soft mask."""

    def __init__(self, state: ChannelMaskState, group: int, piece: ParamSlice) -> None:
        super().__init__()
        self.state, self.group, self.dim = [state], group, piece.dim  # list: not a registered submodule
        self.register_buffer("index", piece.index.clone(), persistent=False)
        self.register_buffer("root", piece.root.clone(), persistent=False)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[0]
        if not state.enabled or not state.current:
            return p
        m = state.current[self.group][self.root.to(p.device)].to(p.dtype)
        mult = torch.ones(p.shape[self.dim], dtype=p.dtype, device=p.device).index_put((self.index.to(p.device),), m)
        shape = [1] * p.ndim
        shape[self.dim] = -1
        return p * mult.view(shape)


def group_scores(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Mean squared producer-filter weight per channel, differentiable (reads the un-masked originals)."""
    total, count = None, 0
    for piece in group.slices:
        if not piece.producer or not piece.param.endswith("weight"):
            continue
        owner, name = resolve(model, piece.param)
        w = getattr(owner, name)
        rows = w.movedim(piece.dim, 0)[piece.index.to(w.device)].reshape(len(piece.index), -1)
        part = torch.zeros(group.size, dtype=w.dtype, device=w.device).index_add(
            0, piece.root.to(w.device), rows.pow(2).sum(1)
        )
        total = part if total is None else total + part
        count += rows.shape[1]
    return total / max(1, count)


LEGACY_NAME = "pdp_channel_state"  # the child module older checkpoints kept PDP's channel thresholds in


def install(
    model: nn.Module, groups: list[ChannelGroup], compute: Callable[[], list[torch.Tensor]] | None = None
) -> ChannelMaskState:
    """Register the parametrizations and the pre-forward hook computing this forward's channel masks.

    `compute` returns one mask per group (default: PDP's soft masks from the state's thresholds). Nothing else
    is added to the network: the returned state is the caller's to keep (and to save).
    """
    state = ChannelMaskState([g.size for g in groups], thresholds=compute is None)
    for gi, group in enumerate(groups):
        for piece in group.slices:
            if piece.dim != 0:
                continue
            owner_name, _, pname = piece.param.rpartition(".")
            owner = model.get_submodule(owner_name)
            parametrize.register_parametrization(owner, pname, ChannelSoftMask(state, gi, piece))

    def compute_masks(module: nn.Module, args) -> None:
        if not state.enabled:
            state.current = []
        else:
            state.current = compute() if compute is not None else channel_masks(model, groups, state)

    state.hooks.append(model.register_forward_pre_hook(compute_masks))
    if compute is None:
        state.hooks.append(model.register_load_state_dict_pre_hook(partial(_absorb_legacy, state)))
    return state


def _absorb_legacy(state: ChannelMaskState, module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Read the thresholds an older checkpoint holds as a child module's buffers (`pdp_channel_state.t2_<i>`,
    `inv_tau_<i>`) into the state, and drop those entries, so a strict load of the network accepts it."""
    head = f"{prefix}{LEGACY_NAME}."
    for key in [k for k in state_dict if k.startswith(head)]:
        value = state_dict.pop(key)
        kind, _, index = key[len(head) :].rpartition("_")
        values = getattr(state, kind, None) if kind in ("t2", "inv_tau") else None
        if values is not None and index.isdigit() and int(index) < len(values):
            values[int(index)] = float(value)
            state.scalars = None


def channel_masks(model: nn.Module, groups: list[ChannelGroup], state: ChannelMaskState) -> list[torch.Tensor]:
    """Every group's soft channel mask m_c = σ((s_c² − t²)·inv_tau·gain) from the current weights.

    Compiled, the thresholds come from the published tensor (`ChannelMaskState.scalars`), the same float32
    values, so the graph survives their changes; eager, from the floats.
    """
    masks, n = [], len(groups)
    scalars = state.scalars if torch.compiler.is_compiling() else None
    for gi, group in enumerate(groups):
        s2 = group_scores(model, group)
        if scalars is not None and scalars.device == s2.device:
            masks.append(torch.sigmoid((s2 - scalars[gi]) * scalars[n + gi] * scalars[2 * n]))
        else:
            masks.append(torch.sigmoid((s2 - state.t2[gi]) * state.inv_tau[gi] * state.gain))
    return masks


@torch.no_grad()
def fold(model: nn.Module, state: ChannelMaskState, masks: list[torch.Tensor]) -> None:
    """Multiply channel masks (from `channel_masks`) into the raw output-side slices they scale.

    Called at hardening: the hard mask then zeroes the pruned channels, while kept channels keep exactly the
    scale m_c they were trained with (no jump of the function where m_c < 1).
    """
    state.current = masks
    for owner in model.modules():
        if not parametrize.is_parametrized(owner):
            continue
        for plist in owner.parametrizations.values():
            for soft in plist:
                if isinstance(soft, ChannelSoftMask) and soft.state[0] is state:
                    plist.original.copy_(soft(plist.original))  # the masked value, written into the raw tensor
    state.current = []


def uninstall(model: nn.Module, groups: list[ChannelGroup], state: ChannelMaskState) -> None:
    """Remove the hooks and the parametrizations (keeping the raw weights)."""
    for hook in state.hooks:
        hook.remove()
    state.hooks = []
    for group in groups:
        for piece in group.slices:
            if piece.dim != 0:
                continue
            owner_name, _, pname = piece.param.rpartition(".")
            owner = model.get_submodule(owner_name)
            if parametrize.is_parametrized(owner, pname):
                parametrize.remove_parametrizations(owner, pname, leave_parametrized=False)


class ChannelSoftMasks:
    """PDP's soft mask per channel of every coupled group, m_c = σ((s_c² − t²)/τ) with s_c² the mean squared
    producer-filter weight; the same surface as `WeightSoftMasks`, budgets and thresholds per group."""

    def __init__(self, model: nn.Module, groups: list[ChannelGroup], gain: float) -> None:
        self.model, self.groups = model, groups
        self.state = install(model, groups)
        self.state.gain = gain

    def set_enabled(self, enabled: bool) -> None:
        self.state.enabled = enabled

    def set_gain(self, gain: float) -> None:
        self.state.set_gain(gain)

    @torch.no_grad()
    def budgets(self, masks: MaskSet, weights: dict[str, str], sparsity: float, allocation: str) -> dict[str, float]:
        """Per-group channel sparsities: uniform, or from one ranking of the normalised scores across groups."""
        if allocation == "uniform":
            return {str(i): sparsity for i in range(len(self.groups))}
        scores = [normalize_group_scores(group_scores(self.model, g).detach().float()) for g in self.groups]
        flat = torch.cat(scores)
        chosen = topk_mask(flat, max(len(scores), round((1.0 - sparsity) * flat.numel())))
        keep = [int(c.sum()) for c in torch.split(chosen, [g.size for g in self.groups])]
        return {str(i): 1.0 - max(1, k) / g.size for i, (k, g) in enumerate(zip(keep, self.groups, strict=True))}

    @torch.no_grad()
    def refresh(
        self, masks: MaskSet, weights: dict[str, str], budgets: dict[str, float], fraction: float, tau: float,
        normalize: bool,
    ) -> None:  # fmt: skip
        state = self.state
        new = {fqn: torch.ones_like(m) for fqn, m in masks.masks.items()}
        for i, group in enumerate(self.groups):
            s2 = group_scores(self.model, group).detach().float()
            keep = max(1, round((1.0 - budgets[str(i)] * fraction) * group.size))
            t, hard = threshold_between(s2.sqrt(), keep)
            t = float(t)  # channel thresholds are host floats (ChannelMaskState): one read per group
            # rounded to float32 as the scores are: the same values the thresholds had as float32 buffers
            state.t2[i] = _f32(t * t if t > 0 else -1.0)
            scale = float(spread(s2)) if normalize else 1.0
            state.inv_tau[i] = _f32(1.0 / (tau * max(scale, 1e-30)))
            group.expand(hard, new)
        if self.groups:
            state.publish(s2.device)
        for fqn, mask in new.items():
            masks.set(fqn, mask)

    def current(self) -> list[torch.Tensor]:
        """This forward's channel masks per group (empty outside the soft phase)."""
        return self.state.current

    def capture_fold(self, masks: MaskSet, weights: dict[str, str]) -> list[torch.Tensor] | None:
        """The channel masks the next forward would apply, taken before the hard thresholds."""
        return channel_masks(self.model, self.groups, self.state) if self.state.enabled else None

    def fold(self, masks: MaskSet, captured: list[torch.Tensor] | None) -> None:
        if captured is not None:
            fold(self.model, self.state, captured)

    def remove(self, weights: dict[str, str]) -> None:
        uninstall(self.model, self.groups, self.state)

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()  # the groups' thresholds (not in the network)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state)


def _f32(value: float) -> float:
    """`value` rounded to float32."""
    return float(torch.tensor(value, dtype=torch.float32))
