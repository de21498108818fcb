"""Helpers shared by the benchmarks: interleaved timing and table/JSON output."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path
from typing import Any

import torch


def parse_cli(doc: str | None) -> argparse.Namespace:
    """`--help` for scripts without options: print what the script does instead of running it."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
    }


def summarize(samples: list[float]) -> dict[str, float]:
    """Median and spread (min..max) of repeated measurements."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-style table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
