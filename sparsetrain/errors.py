"""Turning user errors into one readable line instead of a stack trace.

Every configuration mistake ends the same way, whether Hydra or sparsetrain finds it: one line `error: ...`
saying what is wrong and what is allowed, and exit code `EXIT_CODE`. This module imports nothing heavy, so the
line comes before torch is loaded.

Hydra's composition errors are read from their types and attributes where Hydra 1.3 gives them: an unknown
option (`MissingConfigException.missing_cfg_file` and `.options`), an override that does not parse
(`OverrideParseException.override`), a misspelt key or a value of the wrong type (the OmegaConf exception that
caused the `ConfigCompositionException`, with its `full_key`). Three cases carry nothing but their message, so
its wording is read (`_composition`), which a Hydra upgrade may change (tests/test_bad_config.py runs each
through `train.py`; an unread message is shown as its first line): a group override without its `+` ("Could not
override 'pruner'. No match in the defaults list.", with Hydra's `+pruner=...` hint), the override behind a
misspelt key ("Could not override 'pruner.x'": the key itself is in the cause, but not whether the override
named a key of a group the run lacks) and a sweep without `-m` ("Ambiguous value for argument ...").
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ConfigTypeError, ValidationError

EXIT_CODE = 2  # every user error, Hydra's composition errors included (argparse's code for bad usage)
GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


class ConfigError(ValueError):
    """A user-facing configuration error (printed as one line by `train.py`)."""


def _user_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ValueError, FileNotFoundError]
    data = sys.modules.get("sparsetrain.data.base")  # only loaded data can be missing: never import it here
    if data is not None:
        types.append(data.DataUnavailableError)
    return tuple(types)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


def suggest(name: str, options: Sequence[str], what: str) -> str:
    """`did you mean x? <what>: a, b, c` for a misspelt `name` (just the list when nothing is close)."""
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"{hint}{what}: {', '.join(sorted(options))}"


def group_options(conf_dir: Path | None, group: str) -> list[str]:
    """The options of config group `group` (`conf/<group>/*.yaml`), empty when it is not a group."""
    if conf_dir is None or not (conf_dir / group).is_dir():
        return []
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def _missing_config(error: MissingConfigException) -> str:
    path = error.missing_cfg_file or ""
    group, _, option = path.rpartition("/")
    if not group or error.options is None:  # not an option of a group: a --config-name, a defaults entry
        return _first_line(str(error))
    return f"unknown {group} {option!r}: " + suggest(option, error.options, f"{group} options")


def _composition(error: ConfigCompositionException, conf_dir: Path | None) -> str:
    message, cause = _first_line(str(error)), error.__cause__
    full_key = getattr(cause, "full_key", None)
    if isinstance(cause, (ValidationError, ConfigTypeError)) and full_key:  # a type of sparsetrain.schema
        return f"invalid {str(full_key).split('.')[0]} config: {_first_line(str(cause))} ({full_key})"
    if message.startswith("Could not override '") and message.endswith("No match in the defaults list."):
        group = message.split("'")[1]
        options = group_options(conf_dir, group)
        appended = re.search(r"use (\+\S+)", str(error))  # Hydra's own hint: the same override with a +
        usage = appended.group(1) if appended else f"+{group}=<option>"
        listed = f" ({group} options: {', '.join(options)})" if options else ""
        return f"{group} is not in the default config, so it is added with a +: {usage}{listed}"
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and full_key:
        override = message.split("'")[1] if message.startswith("Could not override '") else str(full_key)
        parent, _, key = str(full_key).rpartition(".")
        if not parent and group_options(conf_dir, key) and override != key:  # `pruner.x=1` with no +pruner=
            options = group_options(conf_dir, key)
            value = re.search(rf"use \+{re.escape(override)}=(\S+)", str(error))
            one = f"{override}=choice({value.group(1)})" if value else f"{override}=choice(<value>)"
            return (
                f"{override} sets a key of {key}, but this run has no {key}: add +{key}=<option> first "
                f"({key} options: {', '.join(options)}); in a sweep over +{key}=a,b, Hydra composes the sweep "
                f"without {key}, so one value of its key is written as a sweep of one: {one}"
            )
        node = getattr(cause, "parent_node", None)
        known = [str(k) for k in node] if node is not None and hasattr(node, "keys") else []
        if not parent:
            known = [k for k in known if k != "hydra"] + [g for g in group_options_all(conf_dir) if g not in known]
        where = f"{parent} keys" if parent else "top-level keys and config groups"
        return f"unknown key {full_key}: " + suggest(key, known, where)
    if message.startswith("Ambiguous value for argument"):
        return f"{message}: a sweep (a,b) needs -m; a list is written [a,b]"
    return message


def group_options_all(conf_dir: Path | None) -> list[str]:
    """Config group names under `conf_dir` (directories holding YAML files), without Hydra's own."""
    if conf_dir is None:
        return []
    internal = ("hydra", "pruner_shared")  # Hydra's own groups; the keys every pruner YAML includes
    return sorted(p.name for p in conf_dir.iterdir() if p.is_dir() and p.name not in internal and any(p.glob("*.yaml")))


def hydra_error_line(error: BaseException, conf_dir: Path | None = None) -> str | None:
    """One line for an error Hydra raises while parsing overrides or composing the config, else None.

    Hydra prints these over several lines (with its search path) and exits 1; here they name the problem,
    the close matches (difflib) and what exists, like every other user error.
    """
    if isinstance(error, OverrideParseException):
        return f"cannot parse the override {error.override!r}: {_first_line(error.message)} (grammar: {GRAMMAR})"
    if isinstance(error, MissingConfigException):
        return _missing_config(error)
    if isinstance(error, ConfigCompositionException):
        return _composition(error, conf_dir)
    return None


def one_line_error(error: BaseException, conf_dir: Path | None = None) -> str | None:
    """The message to show for a user error (bad value, unknown option, missing data), else None.

    Hydra wraps exceptions raised by constructors in `InstantiationException`; the user's problem is the
    cause, so that is what is shown.
    """
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, InstantiationException):
        return _first_line(str(error))
    hydra_line = hydra_error_line(error, conf_dir)
    if hydra_line is not None:
        return hydra_line
    if isinstance(error, _user_types()):
        return _first_line(str(error)) or type(error).__name__
    return None


__all__ = ["EXIT_CODE", "ConfigError", "group_options", "hydra_error_line", "one_line_error", "suggest"]
