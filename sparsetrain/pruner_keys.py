"""The keys every pruner shares (one declaration, one validation) and the pruner registry.

Units follow the project's conventions: `begin`/`end` are fractions of all optimizer steps, `update_every`
is a period in optimizer steps, `sparsity` is the final fraction of zeros over the targeted weights.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import OmegaConf

GRANULARITY_NOUNS = {"unstructured": "single weights", "nm": "N:M groups", "channel": "channels"}  # for messages
GRANULARITY_DIR = Path(__file__).resolve().parent / "granularity"
# the names `@register_granularity("<name>")` declares in `sparsetrain/granularity/` (a new granularity is one
# file there), read from the source: these checks run before torch is imported. Unstructured first, the default.
GRANULARITIES = tuple(
    sorted(
        {
            m
            for f in GRANULARITY_DIR.glob("*.py")
            for m in re.findall(r'@register_granularity\("(\w+)"\)', f.read_text())
        },
        key=lambda name: (name != "unstructured", name),
    )
)
ALLOCATIONS = ("uniform", "global", "erk")
SCHEDULES = ("oneshot", "linear", "cubic")

registry: dict[str, type] = {}

shared_key_doc = """Shared keys (constructor keywords = YAML keys = `pruner.<key>` on the CLI):

    sparsity: Final fraction of zeros over the targeted weights, in [0, 1). With `granularity="nm"` it is
        implied (1 − n/m) and may be omitted. With `granularity="channel"` it is the fraction of output
        channels removed over the prunable channel groups.
    granularity: `unstructured`, `channel` (coupled output channels from Torch-Pruning's dependency graph)
        or `nm` (exactly `n` kept in every `m` consecutive weights along the input dimension).
    n, m: N and M of N:M.
    allocation: `uniform`, `global` (one ranking across layers at every event) or `erk`.
    schedule: `oneshot`, `linear` or `cubic`.
    begin, end: Start of pruning and the step the target is reached, as fractions of all optimizer steps.
    update_every: Optimizer steps between update events.
    include, exclude: Regexes on module names to target / never to target (default: every Conv/Linear).
    keep_first_last: Keep the first conv and the classifier dense.
    seed: Seed of the pruner's own random generator (identical on every DDP rank).
"""


def known_granularities() -> tuple[str, ...]:
    """The package's granularities and any registered elsewhere since (`register_granularity` in a user's file)."""
    registered = getattr(sys.modules.get("sparsetrain.granularity.base"), "REGISTRY", {})
    return GRANULARITIES + tuple(sorted(set(registered) - set(GRANULARITIES)))


def implied_sparsity(granularity: str, n: Any, m: Any) -> float | None:
    """The sparsity N:M implies (1 − n/m), or None for other granularities. The one place this rule lives."""
    if granularity == "nm" and isinstance(n, int) and isinstance(m, int) and 0 < n < m:
        return 1.0 - n / m
    return None


def default_sparsity(granularity: str, n: Any, m: Any, default: float) -> float:
    """YAML default of `pruner.sparsity` (resolver `sparsity_default`): implied by N:M, else `default`."""
    implied = implied_sparsity(granularity, n, m)
    return default if implied is None else implied


OmegaConf.register_new_resolver("sparsity_default", default_sparsity, replace=True)


def check_fraction(value: Any, key: str, upper_open: bool = False) -> float:
    """`value` as a float in [0, 1] ([0, 1) with `upper_open`), else a ValueError naming `pruner.<key>`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"pruner.{key} must be a number, got {value!r}")
    if not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):
        raise ValueError(f"pruner.{key} must be in [0, {'1)' if upper_open else '1]'}, got {value}")
    return float(value)


class SharedKeys:
    """Validates and stores the shared keys; `defaults` holds a method's own defaults for the keys left None."""

    defaults: ClassVar[dict[str, Any]] = {
        "allocation": "global",
        "schedule": "cubic",
        "begin": 0.0,
        "end": 0.5,
        "update_every": 100,
    }

    def __init__(
        self,
        *,
        sparsity: float | None = None,
        granularity: str = "unstructured",
        n: int = 2,
        m: int = 4,
        allocation: str | None = None,
        schedule: str | None = None,
        begin: float | None = None,
        end: float | None = None,
        update_every: int | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        keep_first_last: bool = True,
        seed: int = 0,
    ) -> None:
        d = self.defaults
        allocation = d["allocation"] if allocation is None else allocation
        schedule = d["schedule"] if schedule is None else schedule
        begin = d["begin"] if begin is None else begin
        end = d["end"] if end is None else end
        update_every = d["update_every"] if update_every is None else update_every
        known = known_granularities()
        if granularity not in known:
            raise ValueError(f"pruner.granularity must be one of {', '.join(known)}; got {granularity!r}")
        defined = getattr(type(self), "granularities", GRANULARITIES)
        defined = known if defined is GRANULARITIES else defined  # a method that lists none takes any, new ones too
        if granularity not in defined:  # before the other keys: their advice may assume this granularity
            what = " or ".join(GRANULARITY_NOUNS.get(g, g) for g in defined)
            lists = {k: getattr(cls, "granularities", GRANULARITIES) for k, cls in registry.items()}
            others = sorted(k for k, g in lists.items() if granularity in (known if g is GRANULARITIES else g))
            raise ValueError(
                f"{type(self).__name__} prunes {what} only: granularity={granularity} is not defined for it "
                f"(pruner.granularity: {', '.join(defined)}; methods for {granularity}: {', '.join(others)})"
            )
        if allocation not in ALLOCATIONS:
            raise ValueError(f"pruner.allocation must be one of {', '.join(ALLOCATIONS)}; got {allocation!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"pruner.schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
        if granularity == "nm":
            if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
                raise ValueError(f"N:M needs integers 0 < n < m, got n={n}, m={m}")
            implied = implied_sparsity(granularity, n, m)
            if sparsity is not None and not math.isclose(sparsity, implied, abs_tol=1e-9):
                raise ValueError(
                    f"pruner.sparsity={sparsity} contradicts granularity=nm with {n}:{m} (implied {implied:g}); "
                    "omit pruner.sparsity or set it to the implied value"
                )
            sparsity = implied
        if sparsity is None:
            raise ValueError("pruner.sparsity is required (final fraction of zero weights, in [0, 1))")
        self.sparsity = check_fraction(sparsity, "sparsity", upper_open=True)
        self.granularity, self.n, self.m, self.allocation = granularity, n, m, allocation
        self.schedule_kind = schedule
        self.begin, self.end = check_fraction(begin, "begin"), check_fraction(end, "end")
        if self.end < self.begin:
            raise ValueError(f"pruner.end ({end}) must not be before pruner.begin ({begin})")
        if not isinstance(update_every, int) or isinstance(update_every, bool) or update_every < 1:
            raise ValueError(f"pruner.update_every must be an integer >= 1 optimizer step, got {update_every!r}")
        self.update_every = update_every
        self.include, self.exclude = list(include or []), list(exclude or [])
        self.keep_first_last, self.seed = keep_first_last, seed
        effective = {
            "sparsity": self.sparsity,
            "granularity": granularity,
            "n": n,
            "m": m,
            "allocation": allocation,
            "schedule": schedule,
            "begin": self.begin,
            "end": self.end,
            "update_every": update_every,
            "include": self.include,
            "exclude": self.exclude,
            "keep_first_last": keep_first_last,
            "seed": seed,
        }
        effective.update(dict.fromkeys(getattr(self, "unused_keys", ()), None))  # ignored: recorded as unset
        self._config = {**getattr(self, "_config", {}), **effective}  # shared keys: the values in effect


def register_pruner(key: str):
    """Class decorator adding a pruner to the registry under `key` (= its `conf/pruner/<key>.yaml`)."""

    def wrap(cls: type) -> type:
        cls.key = key
        registry[key] = cls
        return cls

    return wrap


def _default_of(key: str, kwargs: dict[str, Any]) -> Any:
    """The value a shared key has when nobody set it: None, or what `conf/pruner_shared/keys.yaml` gives every
    method (the N:M shape 2:4; sparsity 0.9, or the one N:M implies)."""
    if key == "sparsity":
        return default_sparsity(kwargs.get("granularity", "unstructured"), kwargs.get("n", 2), kwargs.get("m", 4), 0.9)
    return {"n": 2, "m": 4}.get(key)


class ConfiguredPruner(SharedKeys):
    """Records every constructor's arguments, so `describe()` (results.json `pruner_config`) cannot drift.

    `unused_keys` are shared keys a method ignores, declared here only: at their default (`None`, or the shared
    YAML's value) they are dropped, any other value is refused in one line instead of being silently ignored.
    """

    key: ClassVar[str] = "base"
    unused_keys: ClassVar[tuple[str, ...]] = ()
    granularities: ClassVar[tuple[str, ...]] = GRANULARITIES  # the ones the method defines

    def __init_subclass__(cls, **kw: Any) -> None:
        """Record every constructor's arguments (defaults filled in), so `describe()` cannot drift from them."""
        super().__init_subclass__(**kw)
        if "__init__" not in cls.__dict__:
            return
        init, signature = cls.__init__, inspect.signature(cls.__init__)

        @functools.wraps(init)
        def recording_init(self, *args: Any, **kwargs: Any) -> None:
            if not hasattr(self, "_config"):  # the user-facing call: refuse keys this method does not use
                left = {
                    k: v for k, v in kwargs.items() if k in self.unused_keys and v in (None, _default_of(k, kwargs))
                }
                unused = sorted(k for k in self.unused_keys if k in kwargs and k not in left)
                if unused:
                    raise ValueError(
                        f"pruner.{unused[0]} is not used by {self.key} ({type(self).__name__}); leave it unset "
                        f"(keys this method ignores: {', '.join(self.unused_keys)})"
                    )
                kwargs = {k: v for k, v in kwargs.items() if k not in left}
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            config = getattr(self, "_config", {})
            for name, param in signature.parameters.items():
                if name != "self" and param.kind is not inspect.Parameter.VAR_KEYWORD:
                    config.setdefault(name, bound.arguments[name])  # the outermost (user-facing) value wins
            self._config = config
            init(self, *args, **kwargs)

        cls.__init__ = recording_init

    def target_text(self) -> str:
        """The run's target in words, for the start-of-fit line."""
        return f"target sparsity {self.sparsity:g}"

    def describe(self) -> dict[str, Any]:
        """Every constructor keyword with the value this pruner was built with (results.json `pruner_config`)."""
        return {"key": self.key, **self._config}


__all__ = [
    "ALLOCATIONS",
    "GRANULARITIES",
    "SCHEDULES",
    "ConfiguredPruner",
    "SharedKeys",
    "check_fraction",
    "implied_sparsity",
    "registry",
    "register_pruner",
]
