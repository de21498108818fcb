"""The command line of `train.py`, in-process: its checks (`check_command_line`) and `--help`.

`train.py` hands its command line to Hydra; the Hydra callback `sparsetrain.hydra_checks.CheckJobs` checks every
job before Hydra creates a run directory. `check_command_line` runs the same checks on an argv of overrides
(with `-m` for a sweep), for the tests and for tools; `pruner_help` is the pruner list `--help` shows
(`conf/hydra/help/sparsetrain.yaml`, through the resolver `sparsetrain_pruner_help`).
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path
from typing import Any

from omegaconf import ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparsetrain.config import CONF_DIR
from sparsetrain.hydra_checks import MAX_SWEEP_JOBS_CHECKED, check_overrides, job_overrides

MULTIRUN_FLAGS = ("-m", "--multirun")


def _split(argv: list[str]) -> tuple[list[str], bool]:
    """The overrides of `argv` (`train.py` first) and whether it asks for a sweep; no other Hydra flag is read."""
    return [a for a in argv[1:] if a not in MULTIRUN_FLAGS], any(a in MULTIRUN_FLAGS for a in argv[1:])


def _job_overrides(
    overrides: list[str], multirun: bool, conf_dir: Path = CONF_DIR, config_name: str = "train"
) -> list[list[str]]:
    """The override list of every job `overrides` describes (one job without -m; the basic sweeper's grid with it,
    the study config's sweep first, as the sweeper reads it); [] when another sweeper chooses the jobs."""
    return job_overrides(overrides, multirun, conf_dir, config_name) or []


def check_command_line(argv: list[str], conf_dir: Path = CONF_DIR, config_name: str = "train") -> list[str]:
    """Check, in-process, the run(s) `train.py <argv[1:]>` would start, as `train.py` checks them before Hydra
    creates a run directory; returns `argv`. `argv` holds overrides and `-m`/`--multirun` only.

    Raises:
        ConfigError, or Hydra's composition error: `sparsetrain.errors.one_line_error` makes either one line.
    """
    overrides, multirun = _split(argv)
    check_overrides(overrides, multirun, conf_dir, config_name)
    return argv


# ------------------------------------------------------------------------------------------------ help
INTERNAL_GROUPS = ("hydra", "pruner_shared", "schema")  # Hydra's own; the keys every pruner YAML extends; the types
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
            keys = " ".join(f"{k}={_value(v)}" for k, v in defaults.items() if k not in unused)
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


def _groups(loader: Any, parent: str = "") -> list[str]:
    """Every config group below `parent` that has options, nested ones as `a/b` (Hydra's config loader)."""
    from hydra.core.object_type import ObjectType

    groups = []
    for name in loader.list_groups(parent):
        group = f"{parent}/{name}" if parent else name
        if loader.get_group_options(group, ObjectType.CONFIG):
            groups.append(group)
        if loader.get_group_options(group, ObjectType.GROUP):
            groups.extend(_groups(loader, group))
    return groups


def help_groups() -> str:
    """`group: option, ...` for the groups a user chooses from (Hydra's groups without `INTERNAL_GROUPS`)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    groups = sorted(g for g in _groups(loader) if g.split("/")[0] not in INTERNAL_GROUPS)
    text = "\n".join(f"{g}: {', '.join(sorted(loader.get_group_options(g)))}" for g in groups)
    return text.replace("$", "$$")


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


__all__ = [
    "MAX_SWEEP_JOBS_CHECKED",
    "check_command_line",
    "first_sentence",
    "help_config",
    "help_groups",
    "pruner_help",
    "summary",
]
