"""Resuming a run from a checkpoint with the settings that wrote it.

Hydra does not restore a run's config from its checkpoint: the user repeats the overrides. A repeated command
that differs (another `pruner.sparsity`, model, data shape, optimizer or budget) used to be accepted without a
word, and `results.json` then reported the checkpoint's masks beside the new settings. So every checkpoint
records the settings a resume must repeat (`RunSettings`, a callback state), and `check_resume` refuses a
resume whose settings differ, in one line naming every differing key with both values, before any model or
data is built.

What is compared: every `pruner.*`, `model.*` and `optim.*` key; the data set and its shape (every `data.*`
key but where it is read from and how it is loaded); `seed` and `label_smoothing`; and the training budget
(`trainer.max_epochs`, `max_steps`, `limit_train_batches`, `accumulate_grad_batches`), because every
schedule is a fraction of it: a longer budget moves every pruning event. A deliberate change is possible by
naming the keys (or whole groups) in `resume_allow_changes`, e.g. `resume_allow_changes=[trainer.max_epochs]`.
Checkpoints written before settings were recorded resume with a warning (only the pruner is checked).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict
from typing_extensions import override

log = logging.getLogger("sparsetrain")

STATE_KEY = "RunSettings"
STATE_PREFIX = "SparsityCallback["  # the pruner's state: `SparsityCallback[<pruner key>]`
LOADING_KEYS = {"num_workers", "on_device", "eval_batch_size", "root", "download"}  # how data is read, not what
BUDGET_KEYS = ("max_epochs", "max_steps", "limit_train_batches", "accumulate_grad_batches")


def _plain(value: Any) -> Any:
    """A config value as plain Python (tuples as lists), so it compares equal after a checkpoint round trip."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`, values as plain Python (tuples as lists, so a config compares equal to
    itself read back from a checkpoint; lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = _plain(value)
    return out


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings of a run that a resume must repeat, as flat dotted keys (see the module docstring)."""

    def group(name: str) -> dict[str, Any]:
        node = cfg.get(name)
        return OmegaConf.to_container(node, resolve=True) if node is not None else {}

    data = {k: v for k, v in group("data").items() if k not in LOADING_KEYS}
    trainer = cfg.get("trainer") or {}
    settings = {
        "pruner": group("pruner") or None,
        "model": group("model"),
        "optim": group("optim"),
        "data": data,
        "trainer": {k: _plain(trainer.get(k)) for k in BUDGET_KEYS},
        "seed": cfg.get("seed"),
        "label_smoothing": cfg.get("label_smoothing", 0.0),
    }
    return flatten(settings)


def differences(
    recorded: Mapping[str, Any], current: Mapping[str, Any], allowed: Iterable[str] = (), where: str = "the checkpoint"
) -> list[str]:
    """`key: <recorded> in <where>, <current> now` for every key that differs, skipping `allowed` keys and groups
    (`trainer.max_epochs`, or `optim` for every optimizer key)."""
    allowed = [str(a) for a in allowed]

    def free(key: str) -> bool:
        return any(key == a or key.startswith(f"{a}.") for a in allowed)

    out = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key, "<unset>"), current.get(key, "<unset>")
        if old != new and not free(key):
            out.append(f"{key}: {old!r} in {where}, {new!r} now")
    return out


class RunSettings(pl.Callback):
    """Records `run_settings(cfg)` in every checkpoint the run writes (read back by `check_resume`)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.settings = run_settings(cfg)

    @property
    @override
    def state_key(self) -> str:
        return STATE_KEY

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "settings": self.settings}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: `check_resume` compared the settings before the run was built."""


def pruner_in_checkpoint(checkpoint: Mapping[str, Any]) -> str | None:
    """Key of the pruner whose callback state a Lightning checkpoint holds (None: written without one)."""
    for key in checkpoint.get("callbacks") or {}:
        if key.startswith(STATE_PREFIX):
            return key[len(STATE_PREFIX) : -1]
    return None


def recorded_settings(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The settings a checkpoint was written with; None for a checkpoint written before they were recorded."""
    state = (checkpoint.get("callbacks") or {}).get(STATE_KEY)
    return dict(state["settings"]) if isinstance(state, Mapping) and "settings" in state else None


def check_resume(cfg: DictConfig) -> Path | None:
    """Resolve `cfg.ckpt_path` (a run directory -> its `checkpoints/last.ckpt`, written back into `cfg`) and
    refuse it, in one line, when it was written by another pruner or with other settings.

    Returns:
        The checkpoint file, or None when the run resumes nothing.

    Raises:
        FileNotFoundError, ValueError: one line naming the path, or every differing key with both values.
    """
    if not cfg.get("ckpt_path"):
        return None
    import torch

    from sparsetrain.checkpoint_files import resolve_checkpoint

    given = str(cfg.ckpt_path)
    path = resolve_checkpoint(given, "ckpt_path")
    if str(path) != given:
        with open_dict(cfg):
            cfg.ckpt_path = str(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    pruner_key = _pruner_key(cfg) if cfg.get("pruner") else None
    wrote = pruner_in_checkpoint(checkpoint)
    if wrote != pruner_key:
        raise ValueError(
            f"ckpt_path={path} was written by a run with {f'+pruner={wrote}' if wrote else 'no pruner'}, but this "
            f"run has {f'+pruner={pruner_key}' if pruner_key else 'none'}: repeat the original run's overrides"
        )
    recorded = recorded_settings(checkpoint)
    if recorded is None:
        log.warning(
            "ckpt_path=%s was written before sparsetrain recorded run settings: resuming without checking that "
            "the model, data, optimizer and pruner settings are the same",
            path,
        )
        _say_resuming(given, path)
        return path
    diffs = differences(recorded, run_settings(cfg), cfg.get("resume_allow_changes") or ())
    if diffs:
        raise ValueError(
            f"ckpt_path={path} was written with other settings ({'; '.join(diffs)}): repeat the original run's "
            "overrides, or name the keys in resume_allow_changes=[...] to change them on purpose"
        )
    _say_resuming(given, path)
    return path


def _say_resuming(given: str, path: Path) -> None:
    """Name the checkpoint a run directory resolved to, once it passed the checks (an error stays one line)."""
    if str(path) != given:
        log.info("ckpt_path=%s: resuming from %s", given, path)


def _pruner_key(cfg: DictConfig) -> str | None:
    """The registry key of the configured pruner class (`+pruner=<key>`), without building it."""
    from hydra.utils import get_class

    cls = get_class(str(cfg.pruner._target_))
    return getattr(cls, "key", None)


def allowed_pruner_changes(cfg: DictConfig) -> list[str]:
    """The pruner keys `resume_allow_changes` lets differ (`*` for the whole group)."""
    out = []
    for entry in cfg.get("resume_allow_changes") or ():
        entry = str(entry)
        if entry == "pruner":
            out.append("*")
        elif entry.startswith("pruner."):
            out.append(entry.split(".", 1)[1])
    return out


__all__ = [
    "STATE_PREFIX",
    "RunSettings",
    "allowed_pruner_changes",
    "check_resume",
    "differences",
    "flatten",
    "pruner_in_checkpoint",
    "recorded_settings",
    "run_settings",
]
