"""LAPP: layer-adaptive progressive channel pruning from scratch under a FLOPs budget (Zhai et al., 2023).

What follows the paper (its abstract; no code is public): channels are pruned during the first part of
training from scratch, with one learnable threshold per prunable layer compared against channel importance
scores; the task loss and a network FLOPs constraint both train the thresholds, so per-layer pruning rates
come out of training; thresholds move gradually; a lightweight bypass is added to every pruned conv before
training; after the pruning epochs the architecture is frozen.

Our choices where the abstract is silent (see the class docstring for the formulas):
- one threshold per coupled channel group (a layer, or every layer a residual stream couples);
- scores: a channel's producer-filter L2 norm divided by its group's mean (scale-free across layers);
- a straight-through mask: the forward uses the hard mask 1[s ≥ θ], the backward a sigmoid's slope;
- the FLOPs term: the distance of the hard masks' FLOPs from a budget that tightens from 1 to
  `max_flops_ratio` on a cubic schedule between `begin` and `end` (progressive: nothing is cut at once);
- the bypass: a foldable low-rank 1×1 branch (`lapp_bypass`), so the deployed network is the plain one;
- at `end` the masks are projected onto the budget exactly, the network is physically slimmed
  (Torch-Pruning, as the export does), the optimizer state of the kept channels carried over, and training
  continues on the smaller network (truly cheaper steps).

The pruner holds what it learns (thresholds, masks) and when it acts; the FLOPs arithmetic (budget, floors,
projection) is `lapp_budget`, the bypass `lapp_bypass`, the slimmed network's bookkeeping `lapp_slimmed`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import sparsetrain.pruners.lapp_bypass as lapp_bypass
import sparsetrain.pruners.lapp_slimmed as lapp_slimmed
from sparsetrain.accounting import module_flops
from sparsetrain.granularity import channel_soft
from sparsetrain.optim_surgery import carry_optimizer_state
from sparsetrain.pruners.base import Pruner, register_pruner
from sparsetrain.pruners.lapp_budget import GroupFlops
from sparsetrain.schedules import SparsitySchedule, to_step
from sparsetrain.slim import ChannelRemoval, find_removable_channels, remove_channels
from sparsetrain.targets import candidate_layers, select_targets


@register_pruner("lapp")
class LAPP(Pruner):
    """LAPP: learnable per-layer thresholds under a FLOPs budget, lightweight bypass, slimming at `end`.

    Per coupled channel group g with channels c: score s_c = ‖W_c‖₂ / mean_c ‖W_c‖₂ (producer filters),
    mask m_c = 1[s_c ≥ θ_g] in the forward with gradient σ'((s_c − θ_g)/τ)/τ, θ_g a learnable threshold
    (Adam, `threshold_lr`). The loss adds `flops_weight`·|F(m)/F_dense − b(t)|, F(m) = Σ_layers
    F_l·(kept_in/in)·(kept_out/out) the deployed network's FLOPs under the masks, b(t) the budget (cubic
    from 1 at `begin` to `max_flops_ratio` at `end`). At `end` the masks are projected onto the final budget
    (lowest-margin channels dropped while over, highest-margin ones restored while under), the bypasses
    folded and the network slimmed; from then on the pruner does nothing.

    Args:
        max_flops_ratio: FLOPs of the final network as a fraction of the dense network's, in (0, 1].
        threshold_lr: Adam learning rate of the thresholds (in units of the normalised scores).
        flops_weight: λ of the FLOPs term. Two-sided, so the network tracks the budget instead of
            overshooting it (a hinge lets Adam's momentum carry the thresholds far past the budget, and only
            the weak task gradient brings channels back).
        tau: Temperature of the surrogate gradient (normalised score units).
        bypass_ratio: Rank of each bypass as a fraction of its conv's output channels (0: no bypass).
        min_keep: Fraction of every group's channels always kept (its highest scores), in [0, 1): a density
            floor on the learned allocation (0: one channel, so the network stays connected). Default 0.5:
            without a floor the thresholds emptied the last stage (one layer kept 3 of 64 channels); on the
            shared protocol (seed 0) validation accuracy was 0.9140 / 0.9143 / 0.9195 at 0.5 of the dense FLOPs
            and 0.9030 / 0.9088 / 0.9173 at 0.4 for min_keep 0 / 0.25 / 0.5 (`experiments/lapp`).
    """

    unused_keys = ("sparsity", "n", "m", "allocation")
    settles_events = False  # its masks report the thresholds' decisions; the forward applies its own
    granularities = ("channel",)
    defaults = {**Pruner.defaults, "begin": 0.0, "end": 0.3, "update_every": 10}

    def __init__(
        self,
        max_flops_ratio: float = 0.5,
        granularity: str = "channel",
        threshold_lr: float = 0.01,
        flops_weight: float = 10.0,
        tau: float = 0.1,
        bypass_ratio: float = 0.125,
        min_keep: float = 0.5,
        **shared: Any,
    ) -> None:
        if not isinstance(max_flops_ratio, (int, float)) or not 0.0 < max_flops_ratio <= 1.0:
            raise ValueError(f"pruner.max_flops_ratio must be in (0, 1], got {max_flops_ratio!r}")
        for key, value in (("threshold_lr", threshold_lr), ("flops_weight", flops_weight), ("tau", tau)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"pruner.{key} must be a positive number, got {value!r}")
        if not isinstance(bypass_ratio, (int, float)) or not 0.0 <= bypass_ratio <= 1.0:
            raise ValueError(f"pruner.bypass_ratio must be in [0, 1], got {bypass_ratio!r}")
        if not isinstance(min_keep, (int, float)) or not 0.0 <= min_keep < 1.0:
            raise ValueError(f"pruner.min_keep must be in [0, 1), got {min_keep!r}")
        super().__init__(sparsity=0.0, granularity=granularity, **shared)
        self.max_flops_ratio, self.threshold_lr, self.flops_weight = float(max_flops_ratio), threshold_lr, flops_weight
        self.tau, self.bypass_ratio, self.min_keep = float(tau), float(bypass_ratio), float(min_keep)
        self.slimmed = False
        self.wrapped: list[str] = []
        self.removals: list[ChannelRemoval] = []
        self.history: list[list[float]] = []  # [step, flops ratio, budget, bypass flops ratio] at every event
        self.final: dict[str, Any] = {}
        self.theta: nn.Parameter | None = None
        self._budget = 1.0

    # ------------------------------------------------------------------------------------------- setup
    def attach(self, model: nn.Module, total_steps: int, example_input: torch.Tensor | None = None) -> None:
        if example_input is None:
            raise ValueError("LAPP needs an example input (channel coupling and FLOPs are traced on it)")
        self.example = example_input[:1].detach().cpu()
        plain = select_targets(model, self.include, self.exclude, self.keep_first_last)
        self._plain_targets = list(plain)
        self.dense_flops, plain_per_module = module_flops(model, self.example)
        self._dense_params = sum(p.numel() for p in model.parameters())
        self._dense_shapes = {n: list(m.weight.shape) for n, m in candidate_layers(model).items()}
        self._dense_layer_flops = {n: plain_per_module.get(n, 0) for n in self._dense_shapes}
        self.wrapped = lapp_bypass.add_bypasses(model, list(plain), self.bypass_ratio) if self.bypass_ratio else []
        super().attach(model, total_steps, example_input)

    def candidates(self, model: nn.Module) -> dict[str, nn.Module]:
        """The user's selection on the plain network, renamed into the wrapped one (plus each bypass's `up`)."""
        out, wrapped = {}, set(self.wrapped)
        for name in self._plain_targets:
            if name in wrapped:
                out[f"{name}.conv"] = model.get_submodule(f"{name}.conv")
                out[f"{name}.bypass_up"] = model.get_submodule(f"{name}.bypass_up")
            else:
                out[name] = model.get_submodule(name)
        return out

    def on_fit_start(
        self, optimizer: torch.optim.Optimizer, schedulers: Sequence[Any] = (), steps_per_epoch: int | None = None
    ) -> None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and not self.slimmed:
            raise ValueError(
                "LAPP slims the network mid-training, which DistributedDataParallel cannot follow (its buckets "
                "hold the old parameters): train LAPP on one device, or resume the slimmed checkpoint under DDP"
            )
        super().on_fit_start(optimizer, schedulers, steps_per_epoch)

    def build_schedule(self) -> SparsitySchedule:
        """The budget's schedule; its events are the logged reports: every `update_every` steps, and at least
        five times over a short pruning phase (the thresholds themselves learn at every step)."""
        begin = to_step(self.begin, self.total_steps, "begin")
        self.end_step = max(begin, to_step(self.end, self.total_steps, "end"))
        every = max(1, min(self.update_every, (self.end_step - begin) // 5))
        return SparsitySchedule(self.schedule_kind, 1.0 - self.max_flops_ratio, begin, self.end_step, every)

    def before_masks(self, targets: dict[str, nn.Module]) -> None:
        self._state = channel_soft.install(self.model, self.groups, compute=self._masks)  # held here, not on the net

    def on_attach(self) -> None:
        device = next(self.model.parameters()).device
        # 0.5: below every channel at initialisation (normalised norms of a fresh init lie within ~±20 % of 1)
        self.theta = nn.Parameter(torch.full((len(self.groups),), 0.5, device=device))
        self.threshold_optimizer = torch.optim.Adam([self.theta], lr=self.threshold_lr)
        self._layer_terms()
        self._state.enabled = True

    def _layer_terms(self) -> None:
        """The FLOPs model over the coupled groups, and the density floor that fits the budget."""
        self.group_flops = GroupFlops(self.model, self.example, self.groups, self.dense_flops)
        self._sizes = self.group_flops.sizes
        self.floor_used, self._floors, problem = self.group_flops.fit_floor(self.min_keep, self.max_flops_ratio)
        if problem:
            warnings.warn(problem, stacklevel=3)

    # ------------------------------------------------------------------------------------------- masks
    @torch.no_grad()
    def scores(self) -> list[torch.Tensor]:
        """Normalised channel scores per group: filter L2 norm over the group's mean."""
        out = []
        for group in self.groups:
            norm = channel_soft.group_scores(self.model, group).float().sqrt()
            out.append(norm / norm.mean().clamp_min(1e-12))
        return out

    def _masks(self, scores: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """This forward's channel masks: hard values, straight-through sigmoid gradients on the thresholds."""
        if scores is None:
            scores = self._forward_scores = self.scores()  # kept for `penalty` (same weights until the step)
        masks = []
        for gi, s in enumerate(scores):
            theta = self.theta.to(s.device)  # differentiable: the gradient reaches the parameter
            hard = (s >= theta[gi]).float()
            hard[s.topk(self._floors[gi]).indices] = 1.0  # the floor (at least one channel: the net stays connected)
            soft = torch.sigmoid((s - theta[gi]) / self.tau)
            masks.append(hard + (soft - soft.detach()))
        return masks

    def flops_ratio(self, masks: list[torch.Tensor], bypass: bool = False) -> torch.Tensor:
        """FLOPs under `masks` over the dense network's: the deployed network's, or (`bypass`) the bypasses'."""
        kept = [m.sum() / size for m, size in zip(masks, self._sizes, strict=True)]
        return masks[0].new_zeros(()) + self.group_flops.ratio(kept, bypass)

    def penalty(self) -> torch.Tensor | None:
        """λ·|F(m)/F_dense − b(t)| at the masks of the last forward (their sigmoid recomputed from the forward's
        scores and the same thresholds: the forward's own graph is spent by the task loss's backward)."""
        if self.slimmed or not self._state.current:
            return None
        return self.flops_weight * (self.flops_ratio(self._masks(self._forward_scores)) - self._budget).abs()

    # ------------------------------------------------------------------------------------------- training
    @property
    def masks_weights(self) -> bool:
        return False  # the masks multiply in the forward (parametrizations) until the network is slimmed

    def before_forward(self, step: int) -> None:
        if self.slimmed:
            return
        self.masks.follow_device([self.theta], self.threshold_optimizer)
        if step >= self.end_step:
            self.slim()
            return
        self._budget = 1.0 - self.schedule.sparsity_at(step)

    def before_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        if self.slimmed:  # once, at the first step after slimming: the slimmed network's measured FLOPs
            metrics, self._pending_metrics = self._pending_metrics, {}
            return metrics
        return super().before_optimizer_step(step, optimizer)

    def grads_finite(self) -> bool:
        grad = self.theta.grad
        return grad is None or bool(torch.isfinite(grad).all())

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        if self.slimmed or self.theta.grad is None:
            return
        if self.grads_finite():
            self.threshold_optimizer.step()
        self.threshold_optimizer.zero_grad(set_to_none=True)

    def extra_parameters(self) -> list[nn.Parameter]:
        return [] if self.theta is None or self.slimmed else [self.theta]

    @torch.no_grad()
    def hard_keeps(self) -> list[torch.Tensor]:
        """Bool keep-masks per group from the current scores and thresholds."""
        return [m.detach() != 0 for m in self._masks()]

    def update(self, step: int) -> None:
        """An event: write the current hard decisions into the reporting masks and record the FLOPs."""
        keeps = self.hard_keeps()
        self.granularity_strategy.expand(self.masks, keeps)
        floats = [k.float() for k in keeps]
        self._last = [float(self.flops_ratio(floats)), self._budget, float(self.flops_ratio(floats, bypass=True))]
        self.history.append([step, *self._last])

    def event_metrics(self) -> dict[str, float]:
        ratio, budget, bypass = self._last
        return {
            "flops/ratio": ratio,
            "flops/budget": budget,
            "flops/bypass_ratio": bypass,
            "lapp/threshold_mean": float(self.theta.detach().mean()),
        }

    # ------------------------------------------------------------------------------------------- slimming
    @torch.no_grad()
    def project(self, keeps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Keep-masks meeting the final budget exactly: drop the lowest-margin channels while over it, then
        restore the highest-margin dropped ones while one more still fits (`GroupFlops.project`)."""
        margins = [(s.cpu() - t) for s, t in zip(self.scores(), self.theta.detach().cpu(), strict=True)]
        return self.group_flops.project(keeps, margins, self._floors, self.max_flops_ratio)

    def slim(self) -> None:
        """Project onto the budget, zero the dropped channels, fold the bypasses, remove the channels
        physically and point the optimizer at the smaller parameters (their state carried over)."""
        keeps = self.project(self.hard_keeps())
        before_keeps = {fqn: m.clone() for fqn, m in self.masks.masks.items()}
        self.granularity_strategy.expand(self.masks, keeps)
        self.last_churn = self.churn(before_keeps)
        removed = lapp_slimmed.removed_entries(self.groups, keeps, set(self.wrapped))
        self.masks.remove()  # zeroes every entry of the dropped channels (producers, BN, consumers' inputs)
        self._state.enabled = False
        channel_soft.uninstall(self.model, self.groups, self._state)
        wrapped = set(self.wrapped)
        before = {lapp_bypass.plain_name(n, wrapped) or f"<bypass>{n}": p for n, p in self.model.named_parameters()}
        lapp_bypass.fold_bypasses(self.model)
        example = self.example.to(next(self.model.parameters()).device)
        self.removals = find_removable_channels(self.model, example)  # traced with autograd: not under no_grad
        remove_channels(self.model, example, self.removals)
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None:
            self.reset_state = carry_optimizer_state(optimizer, before, dict(self.model.named_parameters()), removed)
        self.slimmed = True
        self.masks = None
        self.final = lapp_slimmed.measure(self.model, example, self._dense_shapes, self._plain_targets)
        self._pending_metrics = {
            "flops/ratio": self.final["flops"] / self.dense_flops,
            "flops/budget": self.max_flops_ratio,
            "mask/churn": self.last_churn,
        }

    # ------------------------------------------------------------------------------------------- reporting
    def on_fit_end(self) -> None:
        if not self.slimmed:
            self.slim()  # a fit shorter than `end`: the architecture is frozen here

    def finalize(self) -> None:
        """Nothing left to fold: the network is its slimmed plain architecture already."""

    def mask_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.slimmed else self.masks.masks

    def global_sparsity(self) -> float:
        if not self.slimmed:
            return super().global_sparsity()
        return lapp_slimmed.weight_sparsity(self.final, self._dense_shapes)

    def layer_sparsity(self) -> dict[str, float]:
        if not self.slimmed:  # named as in the plain network, bypasses left out
            wrapped = set(self.wrapped)
            named = {lapp_bypass.plain_name(f"{n}.weight", wrapped): v for n, v in super().layer_sparsity().items()}
            return {n[: -len(".weight")] if n.endswith(".weight") else n: v for n, v in named.items() if n}
        return lapp_slimmed.layer_sparsity(self.final, self._dense_shapes)

    def target_text(self) -> str:
        return f"FLOPs budget {self.max_flops_ratio:g} of dense, slimmed at step {self.end_step}"

    def granularity_metrics(self) -> dict[str, float]:
        return {"channel_sparsity": self.channel_sparsity()}

    def channel_sparsity(self) -> float:
        """Fraction of the targeted layers' output channels removed."""
        if not self.slimmed:
            return self.granularity_strategy.channel_sparsity(self.masks)
        return lapp_slimmed.channel_sparsity(self.final)

    def accounting(self, example_input: torch.Tensor | None) -> dict[str, Any] | None:
        """results.json's accounting of the slimmed network, measured (`torch.utils.flop_counter`)."""
        if not self.slimmed:
            return None  # before slimming the masks describe the network (the bypasses counted as layers)
        return {
            "sparsity": self.global_sparsity(),
            "channel_sparsity": self.channel_sparsity(),
            "params_total": self._dense_params,
            "params_nonzero": self.final["params"],
            "flops_dense": self.dense_flops,
            "flops_sparse": self.final["flops"],
            "layers": lapp_slimmed.layer_accounting(self.final, self._dense_shapes, self._dense_layer_flops),
        }

    def removed_channels(self) -> list[ChannelRemoval]:
        return list(self.removals)

    def report(self) -> dict[str, Any]:
        return {
            "lapp": {
                "max_flops_ratio": self.max_flops_ratio,
                "min_keep_used": getattr(self, "floor_used", self.min_keep),  # the floor in effect (lowered to fit)
                "flops_ratio": self.final["flops"] / self.dense_flops if self.final else None,
                "slimmed_at_step": self.end_step,
                "layer_channel_pruning": self.final.get("rates", {}),
                "history": self.history,
                "bypassed_layers": self.wrapped,
            },
            "removed_channels": [r.to_json() for r in self.removals],
        }

    # ------------------------------------------------------------------------------------------- state
    def extra_state(self) -> dict[str, Any]:
        state = {"history": self.history, "slimmed": self.slimmed, "budget": self._budget}
        if self.slimmed:
            state.update(removals=[r.to_json() for r in self.removals], final=self.final)
        else:
            state.update(theta=self.theta.detach().cpu(), optimizer=self.threshold_optimizer.state_dict())
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.history = [list(h) for h in state.get("history", [])]
        self._budget = state.get("budget", 1.0)
        if state.get("slimmed"):
            return  # replayed by `before_model_load`
        with torch.no_grad():
            self.theta.copy_(state["theta"].to(self.theta.device))
        self.threshold_optimizer.load_state_dict(state["optimizer"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.slimmed:
            self._restore(state)  # after `before_model_load` replayed the slimming: counters and history
        else:
            super().load_state_dict(state)

    def before_model_load(self, state: dict[str, Any]) -> None:
        """A checkpoint written after slimming: remove the same channels now, so its weights fit."""
        if not state.get("slimmed") or self.slimmed:
            return
        self.masks.remove()
        self._state.enabled = False
        channel_soft.uninstall(self.model, self.groups, self._state)
        lapp_bypass.fold_bypasses(self.model)
        self.removals = [ChannelRemoval.from_json(r) for r in state["removals"]]
        remove_channels(self.model, self.example.to(next(self.model.parameters()).device), self.removals)
        self.slimmed, self.masks, self.final = True, None, state["final"]
        self._restore(state)
