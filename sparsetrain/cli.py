"""The command line of `train.py`: every job checked before Hydra creates a run directory, and `--help`.

`check_command_line` composes each job's config exactly as Hydra will and runs `sparsetrain.config.check_run`
on it, so a mistake is one line and writes nothing; `pruner_help` is the pruner list `--help` shows
(`conf/hydra/help/sparsetrain.yaml`, through the resolver `sparsetrain_pruner_help`).
"""

from __future__ import annotations

import inspect
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from omegaconf import ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from sparsetrain.config import CONF_DIR, ConfigError, _light_checks, check_run

MAX_SWEEP_JOBS_CHECKED = 256


def _config_sweep_params(overrides: list[str], conf_dir: Path, config_name: str) -> list[str]:
    """The sweep a study's config declares (`hydra.sweeper.params` of `conf/experiment/<study>.yaml`), as overrides
    the basic sweeper puts before the command line's."""
    picks = [o for o in overrides if o.split("=")[0].lstrip("+") == "experiment" and "," not in o]
    if not picks:
        return []
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3", job_name="train"):
        cfg = GlobalHydra.instance().hydra.compose_config(
            config_name, picks, run_mode=RunMode.MULTIRUN, from_shell=True, with_log_configuration=False
        )
    params = cfg.hydra.sweeper.get("params") or {}
    return [f"{k}={v}" for k, v in params.items()]


def _job_overrides(
    overrides: list[str], multirun: bool, conf_dir: Path = CONF_DIR, config_name: str = "train"
) -> list[list[str]]:
    """The override list of every job `overrides` describes (one job without -m; the basic sweeper's grid with it,
    the study config's sweep first, as the sweeper reads it)."""
    if not multirun:
        return [overrides]
    if any(o.lstrip("+~").startswith("hydra/sweeper") for o in overrides):
        return []  # another sweeper chooses the jobs: each is checked when it starts
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept = _config_sweep_params(overrides, conf_dir, config_name) + overrides
    parsed = OverridesParser.create().parse_overrides(swept)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch][:MAX_SWEEP_JOBS_CHECKED]


def check_command_line(argv: list[str], conf_dir: Path, config_name: str = "train") -> list[str]:
    """Check the run(s) `train.py` was asked for, before Hydra creates a run directory; returns the argv to run.

    Composes each job's config exactly as Hydra will (same config directory, same overrides) and runs
    `check_run` on it; a Hydra composition error (unknown option, a group without its `+`, a misspelt key, an
    override that does not parse) is raised as a `ConfigError` of one line with the close matches. With
    `--help` and `--cfg` the config is only composed, and `--resolve` is added unless given (resolved values
    are shown). Nothing is checked for `--info`, `--shell-completion`, another config directory, or in the
    extra processes DDP starts (their parent checked).

    Raises:
        ConfigError: the first problem, in one line.
    """
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv[1:])
    shown = bool(args.help or args.cfg)
    if shown and not args.resolve:
        argv = [*argv, "--resolve"]
    skip = ("hydra_help", "info", "shell_completion", "experimental_rerun", "config_dir", "config_path")
    if any(getattr(args, flag) for flag in skip) or os.environ.get("LOCAL_RANK") not in (None, "0"):
        return argv
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from hydra.types import RunMode

    from sparsetrain.errors import hydra_error_line, one_line_error

    previous = HydraConfig.instance().cfg
    try:
        jobs = _job_overrides(list(args.overrides), args.multirun, conf_dir, args.config_name or config_name)
        configs = []
        for overrides in jobs:  # compose and check every job without torch first: the common mistakes come fast
            with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3", job_name="train"):
                cfg = GlobalHydra.instance().hydra.compose_config(
                    args.config_name or config_name,
                    overrides,
                    run_mode=RunMode.RUN,
                    from_shell=True,
                    with_log_configuration=False,
                )
            HydraConfig.instance().set_config(cfg)  # `${hydra:...}` resolves as in the job
            with open_dict(cfg):
                del cfg["hydra"]
            configs.append((overrides, cfg))
        for check in () if shown else (_light_checks, check_run):
            for overrides, cfg in configs:
                try:
                    check(cfg, conf_dir)
                except Exception as e:
                    line = one_line_error(e, conf_dir)
                    if line is None or len(jobs) == 1:
                        raise
                    job = " ".join(o for o in overrides if not o.lstrip("+~").startswith("hydra"))
                    raise ConfigError(f"{line} (sweep job: {job})") from None
    except HydraException as e:
        line = hydra_error_line(e, conf_dir)
        if line is None:
            raise
        raise ConfigError(line) from None
    finally:  # `initialize_config_dir` restored Hydra's global state on exit
        HydraConfig.instance().cfg = previous  # the job sets its own
    return argv


# ------------------------------------------------------------------------------------------------ help
INTERNAL_GROUPS = ("hydra", "pruner_shared")  # Hydra's own; the keys every pruner YAML extends (not a user choice)
ABBREVIATIONS = ("al", "e.g", "i.e", "etc", "cf", "vs", "resp", "approx", "Fig", "Eq", "Sec", "No")


def _pruner_defaults(key: str, conf_dir: Path) -> dict[str, Any] | None:
    """`conf/pruner/<key>.yaml` with the shared keys it pulls in, values resolved where they can be."""
    path = conf_dir / "pruner" / f"{key}.yaml"
    if not path.exists():
        return None
    node = OmegaConf.load(path)
    base = OmegaConf.create()
    for entry in node.pop("defaults", []) or []:
        name = str(entry).split("@")[0].strip("/")
        if name and name != "_self_" and (conf_dir / f"{name}.yaml").exists():
            base = OmegaConf.merge(base, OmegaConf.load(conf_dir / f"{name}.yaml"))
    merged = OmegaConf.merge(base, node)
    out = {}
    for k in merged:
        if k == "_target_":
            continue
        try:
            out[str(k)] = merged[k]
        except OmegaConfBaseException:
            out[str(k)] = "<run seed>" if "seed" in str(OmegaConf.to_container(merged)[k]) else "<interpolated>"
    return out


def _value(v: Any) -> str:
    if isinstance(v, (list, ListConfig)):
        return "[" + ",".join(map(str, v)) + "]"
    if isinstance(v, bool):
        return str(v).lower()
    return "null" if v is None else str(v)


def first_sentence(text: str) -> str:
    """The first sentence of `text`: up to a `.` that is followed by a space and a capital (or ends the text),
    outside brackets and not ending an abbreviation ("et al. 2020", "e.g. ERK" stay inside)."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "." and depth == 0:
            rest = text[i + 1 :]
            word = text[:i].rsplit(None, 1)[-1].lstrip("(\"'`") if text[:i].strip() else ""
            if not rest.strip():
                return text[:i]
            if rest[0] == " " and rest.lstrip()[0].isupper() and word not in ABBREVIATIONS:
                return text[:i]
    return text.rstrip(".")


def summary(cls: type, width: int = 180) -> str:
    """What a pruner is: the first sentence of its docstring (to its first `;` if longer than `width`)."""
    paragraph = " ".join((inspect.getdoc(cls) or cls.__name__).split("\n\n")[0].split())
    line = first_sentence(paragraph)
    if len(line) > width:
        line = line.split("; ")[0]
    return line if len(line) <= width else textwrap.shorten(line, width, placeholder=" ...")


def pruner_help(conf_dir: Path = CONF_DIR, width: int = 110) -> str:
    """The pruners for `train.py --help`: key, one line from the class docstring, its keys with their defaults.

    Read from the registry (`list_pruners`), so a new method file shows up here; the defaults come from its
    `conf/pruner/<key>.yaml` (keys the method ignores are left out). Lines are wrapped at `width` columns.
    """
    from sparsetrain.pruners import list_pruners

    lines, indent = [], " " * 21
    for key, cls in sorted(list_pruners().items()):
        lines.extend(
            textwrap.wrap(summary(cls), width, initial_indent=f"  +pruner={key:<10} ", subsequent_indent=indent)
        )
        defaults = _pruner_defaults(key, conf_dir)
        if defaults is None:
            names = [n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind == p.KEYWORD_ONLY]
            keys = "keys: " + " ".join(names)
        else:
            unused = set(getattr(cls, "unused_keys", ()))
            keys = " ".join(f"{k}={_value(v)}" for k, v in defaults.items() if not (k in unused and v is None))
        lines.extend(textwrap.wrap(keys, width, initial_indent=indent, subsequent_indent=indent))
    return "\n".join(lines).replace("$", "$$")  # the help template is a string.Template


def _without_targets(node: Any) -> Any:
    """A plain container with every `_target_` key removed (an instantiation detail, not a setting)."""
    if isinstance(node, dict):
        return {k: _without_targets(v) for k, v in node.items() if k != "_target_"}
    if isinstance(node, list):
        return [_without_targets(v) for v in node]
    return node


def help_config(root: Any) -> str:
    """The composed config as `--help` shows it: resolved, without the `hydra` node and without `_target_`."""
    job = {str(k): root[k] for k in root if k != "hydra"}  # the help node itself lives under hydra
    plain = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in job.items()}
    return OmegaConf.to_yaml(OmegaConf.create(_without_targets(plain))).replace("$", "$$")


def help_groups() -> str:
    """`group: option, ...` for the groups a user chooses from (Hydra's list without `INTERNAL_GROUPS`)."""
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance().hydra
    text = hydra.format_config_groups(lambda group: group.split("/")[0] not in INTERNAL_GROUPS)
    return text.rstrip("\n").replace("$", "$$")


def _asked_for_help() -> bool:
    return bool({"--help", "-h"} & set(sys.argv[1:]))


def _help_pruners() -> str:
    """Resolver `sparsetrain_pruner_help` (conf/hydra/help/sparsetrain.yaml). Hydra resolves the help node while
    composing every run, so the list (which imports the pruners, hence torch) is made only for `--help`."""
    return pruner_help() if _asked_for_help() else ""


def _help_config(*, _root_: Any) -> str:
    """Resolver `sparsetrain_help_config`: `help_config` of the config being shown, only for `--help`."""
    return help_config(_root_) if _asked_for_help() else ""


def _help_groups() -> str:
    """Resolver `sparsetrain_help_groups`: `help_groups`, only for `--help`."""
    return help_groups() if _asked_for_help() else ""


OmegaConf.register_new_resolver("sparsetrain_pruner_help", _help_pruners, replace=True)
OmegaConf.register_new_resolver("sparsetrain_help_config", _help_config, replace=True)
OmegaConf.register_new_resolver("sparsetrain_help_groups", _help_groups, replace=True)


__all__ = ["check_command_line", "first_sentence", "help_config", "help_groups", "pruner_help", "summary"]
