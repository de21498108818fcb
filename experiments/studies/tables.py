"""The README's results tables, written from the studies' CSVs, so that a table cannot drift from its runs.

    python -m experiments.studies.tables           # rewrite every study's block in README.md
    python -m experiments.studies.tables --check   # exit 1 when README.md is not what the CSVs give

A block is the text between `<!-- study:<name> -->` and `<!-- /study:<name> -->` in README.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from experiments.studies.data import cells, flops_setting, target_setting

README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass(frozen=True)
class Layout:
    """A study's table: its columns (settings), its rows (methods), how a row finds its column."""

    settings: tuple[float, ...]
    methods: tuple[str, ...]
    setting_of: Callable = target_setting
    header: Callable[[float], str] = lambda s: f"{s * 100:g} %"


LAYOUT = {
    "unstructured": Layout(
        (0.9, 0.95, 0.98), ("dense", "magnitude", "gmp", "imp", "granet", "rigl", "set", "pdp", "bip")
    ),
    "structured": Layout((0.5, 0.4), ("dense", "gmp", "pdp", "lapp"), flops_setting, lambda s: f"{s:g} of dense FLOPs"),
}


def _fmt(cell) -> str:
    n = len(cell.test_acc)
    return f"{cell.mean:.4f} ± {cell.spread:.4f} ({n})" if n > 1 else f"{cell.mean:.4f} (1)"


def table(study: str) -> str:
    """Markdown: one row per method, one column per setting; test accuracy, mean ± half range (seeds)."""
    layout = LAYOUT[study]
    settings, order = layout.settings, layout.methods
    found = cells(study, settings, layout.setting_of)
    head = ["method", *(layout.header(s) for s in settings), "optimizer steps per run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in order:
        row_cells = [found.get((method, None if method == "dense" else s)) for s in settings]
        if not any(row_cells):
            continue
        steps = sorted({st for c in row_cells if c for st in c.steps})
        values = [_fmt(c) if c else "" for c in row_cells]
        lines.append("| " + " | ".join([method, *values, ", ".join(map(str, steps))]) + " |")
    return "\n".join(lines)


def render(text: str, studies: tuple[str, ...] = tuple(LAYOUT)) -> str:
    """`text` with every study's block replaced by its table."""
    for study in studies:
        block = re.compile(rf"(<!-- study:{study} -->\n)(?:.*?\n)?(<!-- /study:{study} -->)", re.S)
        if not block.search(text):
            raise SystemExit(f"README.md has no block <!-- study:{study} --> ... <!-- /study:{study} -->")
        body = table(study)
        text = block.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md differs from the CSVs")
    args = parser.parse_args(argv)
    old = README.read_text()
    new = render(old)
    if args.check:
        stale = "README.md's study tables differ from the CSVs: run python -m experiments.studies.tables"
        sys.exit(0 if new == old else stale)
    README.write_text(new)
    print(f"wrote {len(LAYOUT)} study table(s) into {README}")


if __name__ == "__main__":
    main()
