"""results.json `pruner_config`: every constructor keyword, with the value the pruner uses; it rebuilds the pruner."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sparsetrain.app import run
from sparsetrain.pruners import list_pruners

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "test=false"]


def constructor_keywords(cls: type) -> set[str]:
    """Every keyword of every `__init__` along the class's MRO (what `**common`/`**kw` forward to)."""
    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                names.add(p.name)
    return names


def plain_attributes(obj: object) -> dict:
    """The public, plain-typed attributes of an (unattached) pruner: what its constructor decided."""
    plain = (str, int, float, bool, type(None), list, tuple)
    return {k: v for k, v in vars(obj).items() if not k.startswith("_") and isinstance(v, plain)}


def normalized(value):
    return list(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("key", sorted(list_pruners()))
def test_pruner_config_holds_every_constructor_keyword_with_the_value_the_pruner_uses(compose, key):
    cfg = compose(f"+pruner={key}", "pruner.seed=5", *TINY, "export=false")
    run(cfg)
    config = json.loads((Path(cfg.output_dir) / "results.json").read_text())["pruner_config"]
    cls = list_pruners()[key]
    keywords = constructor_keywords(cls)
    assert keywords <= set(config), f"missing from pruner_config: {sorted(keywords - set(config))}"
    used = instantiate(cfg.pruner)  # the pruner this run trained with, before attach
    # what the user configured (YAML and command line) appears as configured; null ("the default") may appear
    # as the value it resolves to (include: null is the empty list the pruner uses)
    for k, v in OmegaConf.to_container(cfg.pruner, resolve=True).items():
        if k != "_target_" and v is not None and k not in cls.unused_keys:
            assert normalized(config[k]) == normalized(v), k
    assert all(config[k] is None for k in cls.unused_keys)  # keys the method ignores: recorded as unset
    assert config["seed"] == 5
    # values the class fills in (RigL's regrow_fraction 0.3, SET's random growth...) appear as used
    for k, v in plain_attributes(used).items():
        if k in keywords and config[k] is not None:
            assert normalized(config[k]) == normalized(v), k
    # and the config alone rebuilds the same pruner (a key the method does not use is recorded as null)
    rebuilt = cls(**{k: config[k] for k in keywords})
    assert plain_attributes(rebuilt) == plain_attributes(used)
