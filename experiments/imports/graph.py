"""The library's import graph, read from the source (every `import`, function-level ones included), its import
circles, and a drawing.

    python -m experiments.imports.graph                 # circles in the working tree, plots/imports_<rev>.png
    python -m experiments.imports.graph --rev <commit>  # the same for a commit (read with `git show`)

An edge a → b means module a names b in an import (`from b import x` counts b, and b.x when that is a module;
`import b.c` counts b.c; a package is its `__init__`; the parent packages Python initialises first are not
counted). A circle is a strongly connected component of more than one module.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _sources(rev: str | None) -> dict[str, str]:
    """Module name -> source of every file under sparsetrain/, in the working tree or at `rev`."""
    if rev is None:
        files = {p.relative_to(ROOT).as_posix(): p.read_text() for p in (ROOT / "sparsetrain").rglob("*.py")}
    else:
        listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "sparsetrain"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
        show = ["git", "show"]
        files = {
            f: subprocess.run([*show, f"{rev}:{f}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
            for f in listed
            if f.endswith(".py")
        }
    out = {}
    for path, text in files.items():
        name = path[: -len(".py")].replace("/", ".")
        out[name.removesuffix(".__init__")] = text
    return out


def import_graph(rev: str | None = None) -> dict[str, set[str]]:
    """Module -> the library modules it imports."""
    sources = _sources(rev)
    packages = {m for m in sources if any(o.startswith(m + ".") for o in sources)}
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, text in sources.items():
        package = module if module in packages else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            graph[module].update(t for t in targets if t in sources and t != module)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str, counter: Callable[[], int]) -> None:
        index[v] = low[v] = counter()
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w, counter)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    count = iter(range(10**6))
    for v in sorted(graph):
        if v not in index:
            visit(v, lambda: next(count))
    return sorted(found)


def draw(graph: dict[str, set[str]], title: str, path: Path) -> None:
    """Modules grouped by package on a circle, edges in a circle drawn red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    g = nx.DiGraph([(a, b) for a, targets in graph.items() for b in targets])
    g.add_nodes_from(graph)
    in_circle = {m for c in circles(graph) for m in c}
    red = [(a, b) for a, b in g.edges if a in in_circle and b in in_circle]
    pos = nx.circular_layout(sorted(g.nodes))
    fig, ax = plt.subplots(figsize=(14, 14))
    nx.draw_networkx_edges(g, pos, ax=ax, edge_color="0.75", arrowsize=6, width=0.5)
    nx.draw_networkx_edges(g, pos, ax=ax, edgelist=red, edge_color="red", arrowsize=8, width=1.2)
    colors = ["red" if n in in_circle else "tab:blue" for n in g.nodes]
    nx.draw_networkx_nodes(g, pos, ax=ax, node_size=40, node_color=colors)
    labels = {n: n.removeprefix("sparsetrain.") for n in g.nodes}
    nx.draw_networkx_labels(g, {n: (x * 1.08, y * 1.08) for n, (x, y) in pos.items()}, labels, font_size=7, ax=ax)
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default=None, help="a commit (default: the working tree)")
    args = parser.parse_args(argv)
    graph = import_graph(args.rev)
    found = circles(graph)
    name = args.rev or "worktree"
    print(f"{name}: {len(graph)} modules, {sum(map(len, graph.values()))} imports, {len(found)} import circle(s)")
    for c in found:
        print("  circle:", " <-> ".join(c))
    (HERE / "plots").mkdir(exist_ok=True)
    path = HERE / "plots" / f"imports_{name}.png"
    draw(graph, f"sparsetrain imports at {name}: {len(found)} circle(s) (red)", path)
    print(path)


if __name__ == "__main__":
    main()
