"""The library's modules import each other without a circle (package `__init__` files included), and the
library never imports the studies under `experiments/`."""

from __future__ import annotations

from experiments.imports.graph import circles, import_graph


def test_no_import_circle_among_the_library_modules():
    graph = import_graph()
    assert len(graph) > 40  # the library's modules were found
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
