"""Every job of a `train.py` command checked before Hydra creates a run or sweep directory, with Hydra's public API.

`CheckJobs` is a Hydra callback (`hydra.callbacks.check_jobs` in `conf/train.yaml`). Hydra 1.3 calls its
`on_run_start` and `on_multirun_start` right after composing the command's config, before the run directory
(`run_job`) or the sweep directory (the sweeper's `sweep`) is created and before the job's log file exists. A
run is checked as composed. For a sweep the grid is expanded as Hydra's basic sweeper expands it (the study's
`hydra.sweeper.params`, then the command line; the first key varies slowest), with Hydra's public override
parser; each job is composed with the compose API and checked: every job without torch first (the common
mistakes come fast), then `check_run`. The first problem ends the command: one line `error: ...` (naming the job
of a sweep), exit code `EXIT_CODE`, nothing written. Another sweeper (`hydra/sweeper=...`) chooses its jobs as it
goes: each is checked when it starts (`train.py`'s `main`).

Hydra's own errors (an unknown option, a misspelt key, an override that does not parse) come from composing,
before any callback. Hydra prints those over several lines unless `HYDRA_FULL_ERROR` is set, when it raises
them; `hydra_errors_raised` sets it while Hydra composes, so `train.py` turns them into one line too, and the
callback unsets it again, so a job's own crash is reported as Hydra reports it.

`check_overrides` runs the same checks in-process for a list of overrides (the tests, `sparsetrain.cli`).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from sparsetrain.config import CONF_DIR, ConfigError, check_run, light_checks
from sparsetrain.errors import EXIT_CODE, one_line_error

MAX_SWEEP_JOBS_CHECKED = 256
_FULL_ERROR = "HYDRA_FULL_ERROR"
_full_error_set_here = False


# ------------------------------------------------------------------------------------------------ the jobs
def _override_parser() -> Any:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra = GlobalHydra.instance()  # its config loader lists a group's options for glob(...)
    return OverridesParser.create(config_loader=hydra.config_loader() if hydra.is_initialized() else None)


def sweep_jobs(task_overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None = None) -> list[list[str]]:
    """The override list of every job of a basic-sweeper multirun, in the order it runs them (at most
    `MAX_SWEEP_JOBS_CHECKED`): `sweeper_params` (a study's `hydra.sweeper.params`) first, then `task_overrides`;
    a key given twice keeps its first place and its last value; the first key varies slowest.

    Raises:
        ConfigError: a sweep the basic sweeper does not run (`interval(...)`).
    """
    swept = [f"{key}={value}" for key, value in (sweeper_params or {}).items()] + list(task_overrides)
    axes: dict[str, list[str]] = {}
    for override in _override_parser().parse_overrides(swept):
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise ConfigError(
                f"{override.input_line}: the basic sweeper runs lists (a,b), range(...) and glob(...); "
                "an interval needs another sweeper (hydra/sweeper=...)"
            )
    return [list(job) for job in itertools.islice(itertools.product(*axes.values()), MAX_SWEEP_JOBS_CHECKED)]


def jobs_of(config: DictConfig, task_overrides: Sequence[str], multirun: bool) -> list[list[str]] | None:
    """The jobs of a command whose config (with its `hydra` node) is `config`; None when another sweeper than the
    basic one chooses them."""
    if not multirun:
        return [list(task_overrides)]
    if config.hydra.runtime.choices.get("hydra/sweeper", "basic") != "basic":
        return None
    return sweep_jobs(task_overrides, config.hydra.sweeper.get("params"))


# ------------------------------------------------------------------------------------------------ the checks
@contextlib.contextmanager
def _hydra_config(cfg: DictConfig) -> Iterator[DictConfig]:
    """`cfg` without its `hydra` node, with `${hydra:...}` resolving to that node (as in the job) meanwhile."""
    from hydra.core.hydra_config import HydraConfig

    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(copy.deepcopy(cfg))
    job = copy.deepcopy(cfg)
    with open_dict(job):
        del job["hydra"]
    try:
        yield job
    finally:
        HydraConfig.instance().cfg = previous  # the job sets its own


def check_configs(jobs: Sequence[tuple[Sequence[str], DictConfig]], conf_dir: Path | None, sweep: bool) -> None:
    """Check composed jobs (their overrides, their config with its `hydra` node): every job without torch first,
    then `check_run`. In a sweep, the line names the job.

    Raises:
        ConfigError: the first problem, in one line (other errors as they are).
    """
    for check in (light_checks, check_run):
        for overrides, cfg in jobs:
            try:
                with _hydra_config(cfg) as job:
                    check(job, conf_dir)
            except Exception as e:
                line = one_line_error(e, conf_dir)
                if line is None or not sweep:
                    raise
                raise ConfigError(f"{line} (sweep job: {' '.join(overrides)})") from None


def compose_jobs(
    config_name: str, jobs: Sequence[Sequence[str]], hydra_overrides: Sequence[str], conf_dir: Path | None
) -> list[tuple[Sequence[str], DictConfig]]:
    """Each job composed as the launcher composes it (the command's Hydra overrides, then the job's), with the
    compose API (Hydra must be initialized)."""
    from hydra import compose

    composed = []
    for job in jobs:
        try:
            composed.append((job, compose(config_name, [*hydra_overrides, *job], return_hydra_config=True)))
        except Exception as e:
            line = one_line_error(e, conf_dir)
            if line is None or len(jobs) == 1:
                raise
            raise ConfigError(f"{line} (sweep job: {' '.join(job)})") from None
    return composed


def _command(
    overrides: Sequence[str], multirun: bool, config_name: str
) -> tuple[DictConfig, list[str], list[str], list[list[str]] | None]:
    """For `train.py [-m] <overrides>` (Hydra initialized): the config composed from the overrides that are not
    sweeps (a sweep's own, as Hydra composes it, holds its sweeper and the study's params), the task and the Hydra
    overrides, and the jobs (`jobs_of`)."""
    from hydra import compose

    parsed = _override_parser().parse_overrides(list(overrides))
    hydra_overrides = [o.input_line for o in parsed if o.is_hydra_override()]
    task = [o.input_line for o in parsed if not o.is_hydra_override()]
    fixed = [o.input_line for o in parsed if not (multirun and o.is_sweep_override())]
    config = compose(config_name, fixed, return_hydra_config=True)
    return config, task, hydra_overrides, jobs_of(config, task, multirun)


def job_overrides(
    overrides: Sequence[str], multirun: bool = False, conf_dir: Path = CONF_DIR, config_name: str = "train"
) -> list[list[str]] | None:
    """The override list of every job `train.py [-m] <overrides>` runs (None: another sweeper chooses them)."""
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3", job_name="train"):
        return _command(overrides, multirun, config_name)[3]


def check_overrides(
    overrides: Sequence[str], multirun: bool = False, conf_dir: Path = CONF_DIR, config_name: str = "train"
) -> list[list[str]] | None:
    """What `train.py [-m] <overrides>` checks before anything is written, in-process; returns the jobs checked
    (None when another sweeper chooses them: nothing is checked).

    Raises:
        ConfigError, or Hydra's exception for a composition error (`one_line_error` makes either one line).
    """
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3", job_name="train"):
        config, task, hydra_overrides, jobs = _command(overrides, multirun, config_name)
        if jobs is None:
            return None
        composed = compose_jobs(config_name, jobs, hydra_overrides, conf_dir) if multirun else [(task, config)]
        check_configs(composed, conf_dir, sweep=len(jobs) > 1)
    return jobs


# ------------------------------------------------------------------------------------------------ the callback
@contextlib.contextmanager
def hydra_errors_raised() -> Iterator[None]:
    """While Hydra composes (until `CheckJobs` starts), its composition errors are raised, not printed: sets
    `HYDRA_FULL_ERROR` unless the user did."""
    global _full_error_set_here
    if _FULL_ERROR not in os.environ:
        os.environ[_FULL_ERROR], _full_error_set_here = "1", True
    try:
        yield
    finally:
        _composed()


def _composed() -> None:
    global _full_error_set_here
    if _full_error_set_here:
        os.environ.pop(_FULL_ERROR, None)
        _full_error_set_here = False


def _conf_dir(config: DictConfig) -> Path | None:
    """The config directory of `train.py` (`hydra.main`'s config_path); None with `--config-dir` (other groups)."""
    sources = config.hydra.runtime.get("config_sources") or []
    if any(source.provider == "command-line" for source in sources):
        return None
    main = [Path(s.path) for s in sources if s.provider == "main" and s.schema == "file"]
    return main[0] if main else None


class CheckJobs(Callback):
    """Check the job(s) of a run or a basic-sweeper multirun before Hydra writes anything (see the module)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, kwargs.get("config_name"), multirun=False)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, kwargs.get("config_name"), multirun=True)

    def _check(self, config: DictConfig, config_name: str | None, multirun: bool) -> None:
        _composed()
        if os.environ.get("LOCAL_RANK") not in (None, "0"):
            return  # a DDP process started by rank 0, which checked the run
        conf_dir = _conf_dir(config)
        try:
            task = list(OmegaConf.to_container(config.hydra.overrides.task))
            jobs = jobs_of(config, task, multirun)
            if jobs is None:
                return
            if multirun:
                hydra_overrides = list(OmegaConf.to_container(config.hydra.overrides.hydra))
                composed = compose_jobs(config_name or config.hydra.job.config_name, jobs, hydra_overrides, conf_dir)
            else:
                composed = [(task, config)]
            check_configs(composed, conf_dir, sweep=len(jobs) > 1)
        except Exception as e:  # Hydra turns a callback's exception into a warning and goes on: stop here
            line = one_line_error(e, conf_dir)
            if line is None or os.environ.get("SPARSETRAIN_DEBUG"):
                traceback.print_exc()
                sys.exit(1)
            sys.stderr.write(f"error: {line}\n")
            sys.exit(EXIT_CODE)


__all__ = [
    "MAX_SWEEP_JOBS_CHECKED",
    "CheckJobs",
    "check_configs",
    "check_overrides",
    "compose_jobs",
    "hydra_errors_raised",
    "job_overrides",
    "jobs_of",
    "sweep_jobs",
]
