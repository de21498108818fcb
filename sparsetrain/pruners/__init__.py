"""Pruning methods. Each is registered under the key of its `conf/pruner/<key>.yaml`."""

from sparsetrain.pruners.base import Pruner, list_pruners, register_pruner
from sparsetrain.pruners.granet import SET, GraNet, RigL
from sparsetrain.pruners.imp import IMP
from sparsetrain.pruners.magnitude import GMP, Magnitude
from sparsetrain.pruners.pdp import PDP

__all__ = ["GMP", "IMP", "SET", "GraNet", "Magnitude", "PDP", "Pruner", "RigL", "list_pruners", "register_pruner"]
