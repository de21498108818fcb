"""The README's results tables, written from the studies' CSVs, so that a table cannot drift from its runs.

    python -m experiments.studies.tables           # rewrite every study's block in README.md
    python -m experiments.studies.tables --check   # exit 1 when README.md is not what the CSVs give
    python -m experiments.studies.tables --print gpu_unstructured   # one study's table (any study), printed

A block is the text between `<!-- study:<name> -->` and `<!-- /study:<name> -->` in README.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from experiments.studies.data import (
    NM_JOB,
    Cell,
    cells,
    flops_setting,
    model_setting,
    nm_setting,
    read_rows,
    target_setting,
)
from experiments.studies.orderings import report

README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass(frozen=True)
class Source:
    """Where a column's cells come from: a study (None: the table's own), the setting, how a row finds it, and
    the methods it serves (None: every method)."""

    study: str | None
    setting: float | str | None
    setting_of: Callable | None = None  # None: the table's own
    methods: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Column:
    """A column of extra cells, taken from its first source that has the row's method."""

    header: str
    sources: tuple[Source, ...]


@dataclass(frozen=True)
class Layout:
    """A study's table: its columns (settings), its rows (methods), how a row finds its column; settings whose
    column is shown only where some method ran there (`optional`, before the others: the sweeps "where time
    allows"); columns from other studies after those (`extra`) or before them (`before`); row labels other than
    the method's name; whether README.md has a block for it."""

    required: tuple[float | str, ...]
    methods: tuple[str, ...]
    setting_of: Callable = target_setting
    header: Callable[[float], str] = lambda s: f"{s * 100:g} %"
    extra: tuple[Column, ...] = ()
    before: tuple[Column, ...] = ()  # columns from other studies before the settings' own
    labels: dict[str, str] = field(default_factory=dict)
    readme: bool = True
    optional: tuple[float | str, ...] = ()

    @property
    def settings(self) -> tuple[float | str, ...]:
        """Every setting of the study's own runs, in column order."""
        return (*self.optional, *self.required)

    def columns(self) -> tuple[Column, ...]:
        return (*self.before, *(Column(self.header(s), (Source(None, s),)) for s in self.settings), *self.extra)


UNSTRUCTURED_METHODS = ("dense", "magnitude", "gmp", "imp", "granet", "rigl", "set", "pdp", "bip", "bip from dense")
NM24 = Column("2:4", (Source("structured", "2:4", nm_setting), Source(None, None, methods=("dense",))))
LOW_SPARSITIES = (0.5, 0.8)  # GMP, PDP and GraNet where time allows; IMP's rounds 3 and 7 land there too
FAMILY_METHODS = ("dense", "gmp", "granet", "pdp", "bip", "lapp")
RESNET20 = Column(
    "ResNet-20, 28 px",
    (
        Source("unstructured", 0.9, target_setting, FAMILY_METHODS[:5]),
        Source("structured", 0.5, flops_setting, ("lapp",)),
    ),
)
LAYOUT = {
    "unstructured": Layout((0.9, 0.95, 0.98), UNSTRUCTURED_METHODS, extra=(NM24,), optional=LOW_SPARSITIES),
    "structured": Layout((0.5, 0.4), ("dense", "gmp", "pdp", "lapp"), flops_setting, lambda s: f"{s:g} of dense FLOPs"),
    "family": Layout(
        ("resnet18", "vit"),
        FAMILY_METHODS,
        model_setting,
        {"resnet18": "timm resnet18, 32 px", "vit": "ViT-Tiny (patch 8, AdamW), 32 px"}.get,
        before=(RESNET20,),
        labels={m: f"{m} 90 %" for m in FAMILY_METHODS[1:5]} | {"lapp": "lapp 0.5 of dense FLOPs"},
    ),
    # the GPU preset of the unstructured study (experiments/gpu/README.md): its own runs, not in README.md
    "gpu_unstructured": Layout((0.9, 0.95, 0.98), UNSTRUCTURED_METHODS, readme=False, optional=LOW_SPARSITIES),
}


def _fmt(cell) -> str:
    n = len(cell.test_acc)
    return f"{cell.mean:.4f} ± {cell.spread:.4f} ({n})" if n > 1 else f"{cell.mean:.4f} (1)"


def _lookup(found: dict, method: str, setting) -> Cell | None:
    """A method's cell at a setting; the dense reference (setting None) stands in every column of its row."""
    return found.get((method, setting)) or (found.get(("dense", None)) if method == "dense" else None)


def table(study: str) -> str:
    """Markdown: one row per method, one column per setting; test accuracy, mean ± half range (seeds); the last
    column is the compute: each run's optimizer steps (BiP's dense start is part of its run; a run from another
    run's weights counts that run's steps too; an IMP round counts every round's steps up to it)."""
    layout = LAYOUT[study]
    columns = layout.columns()
    found: dict[tuple[str | None, tuple, Callable], dict] = {}

    def cell(method: str, column: Column) -> Cell | None:
        for src in column.sources:
            if src.methods is not None and method not in src.methods:
                continue
            setting_of = src.setting_of or layout.setting_of
            settings = layout.settings if src.study is None else (src.setting,)
            key = (src.study or study, settings, setting_of)
            if key not in found:
                found[key] = cells(key[0], settings, setting_of)
            if c := _lookup(found[key], method, src.setting):
                return c
        return None

    rows = {method: [cell(method, c) for c in columns] for method in layout.methods}
    optional = {layout.header(s) for s in layout.optional}
    shown = [
        i
        for i, c in enumerate(columns)
        if c.header not in optional or any(r[i] for method, r in rows.items() if method != "dense")
    ]
    columns = [columns[i] for i in shown]
    head = ["method", *(c.header for c in columns), "optimizer steps per run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in layout.methods:
        row_cells = [rows[method][i] for i in shown]
        if not any(row_cells):
            continue
        steps = sorted({st for c in row_cells if c for st in c.steps})
        values = [_fmt(c) if c else "" for c in row_cells]
        label = layout.labels.get(method, method)
        lines.append("| " + " | ".join([label, *values, ", ".join(map(str, steps))]) + " |")
    if wall := wall_time(study):
        lines += ["", wall]
    return "\n".join(lines)


def unplaced(study: str) -> list[str]:
    """The study's own finished runs that land in none of its table's columns (a channel run whose measured FLOPs
    miss every budget, say), so that a run never drops out of a table unnoticed."""
    layout = LAYOUT[study]
    out = []
    for row in read_rows(study):
        if "/round" in row["job"] or row.get("granularity") == "nm" or NM_JOB.fullmatch(row["job"]):
            continue  # IMP rounds at other sparsities; N:M runs have their own column
        if layout.setting_of(row, layout.settings) not in (None, *layout.settings):
            out.append(f"{study}: {row['job']} is in no column of its table (flops_ratio {row.get('flops_ratio')})")
    return out


def wall_time(study: str) -> str:
    """One line: the training time the study's own runs took on the machine that ran them (sum of their
    `train_time_s`; an IMP run's rounds are part of its run)."""
    times = [float(r["train_time_s"]) for r in read_rows(study) if r.get("train_time_s") and "/round" not in r["job"]]
    if not times:
        return ""
    return f"Wall time of its {len(times)} runs: {sum(times) / 3600:.1f} h of training (sum of `train_time_s`)."


IN_README = tuple(study for study, layout in LAYOUT.items() if layout.readme)


def render(text: str, studies: tuple[str, ...] = IN_README, orderings: bool | None = None) -> str:
    """`text` with every study's block replaced by its table, and (by default with every study's table) the block
    of the papers' orderings (`orderings.py`)."""
    blocks: dict[str, Callable[[], str]] = {study: (lambda study=study: table(study)) for study in studies}
    if orderings if orderings is not None else studies == IN_README:
        blocks["orderings"] = report
    for name, body_of in blocks.items():
        block = re.compile(rf"(<!-- study:{name} -->\n)(?:.*?\n)?(<!-- /study:{name} -->)", re.S)
        if not block.search(text):
            raise SystemExit(f"README.md has no block <!-- study:{name} --> ... <!-- /study:{name} -->")
        body = body_of()
        text = block.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md differs from the CSVs")
    parser.add_argument("--print", choices=sorted(LAYOUT), dest="study", help="print this study's table only")
    args = parser.parse_args(argv)
    if args.study:
        print(table(args.study))
        return
    for line in (line for study in IN_README for line in unplaced(study)):
        print(f"warning: {line}", file=sys.stderr)
    old = README.read_text()
    new = render(old)
    if args.check:
        stale = "README.md's study tables differ from the CSVs: run python -m experiments.studies.tables"
        sys.exit(0 if new == old else stale)
    README.write_text(new)
    print(f"wrote {len(IN_README)} study table(s) into {README}")


if __name__ == "__main__":
    main()
