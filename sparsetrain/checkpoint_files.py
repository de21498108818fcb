"""What a path given as a checkpoint is, answered without torch: a Lightning checkpoint, a run directory, or
one line saying what else it is.

A run directory holds several files that are easy to pass where a checkpoint belongs (`results.json`, the
export's `model.safetensors` and `model.json`, Hydra's `.hydra/config.yaml`), and `torch.load` answers each
with an unpickling message that names none of them. `resolve_checkpoint` looks at the contents instead of
trusting the name, in the time it takes to read a few bytes, so a command can refuse a wrong path before it
loads torch:

- a torch.save archive (a zip: it starts with `PK`) whose pickle names a `state_dict`: a checkpoint;
- an older torch.save file (a pickle starting with torch's magic number): accepted, `torch.load` decides;
- safetensors (an 8-byte little-endian header length, then a JSON header starting with `{`): an export's
  `model.safetensors`, or weights in safetensors form;
- JSON: a run's `results.json`, an export's `model.json`, or another JSON file;
- YAML (by suffix): a run's `.hydra/config.yaml` or another config;
- a directory: a run directory (`.hydra/config.yaml` or `checkpoints/`) resolves to its
  `checkpoints/last.ckpt`, a `checkpoints/` folder to its `last.ckpt`; an export directory or any other
  directory is refused.

Errors are one line and start with the path as the user named it (`what`, e.g. `ckpt_path=outputs/x`).
Nothing here imports torch, Lightning or Hydra.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import NoReturn

from sparsetrain.export_files import SPEC, WEIGHTS

LAST = "last.ckpt"
CHECKPOINTS = "checkpoints"
RUN_CONFIG = Path(".hydra") / "config.yaml"
EXPORT_FILES = ("model.safetensors", "model.json")
RESULTS = "results.json"
PASS = "pass the run directory or a .ckpt"

_ZIP = b"PK\x03\x04"
_LEGACY_TORCH = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickle of torch's MAGIC_NUMBER, protocol 2
_SNIFF = 16


def _label(path: Path, what: str) -> str:
    """How a message names the path: `ckpt_path=PATH` for a config key, `what PATH` for a phrase, else `PATH`."""
    if not what:
        return str(path)
    return f"{what}={path}" if what.isidentifier() else f"{what} {path}"


def init_source(path: str | Path) -> Path:
    """The file or export directory `init_from=path` names (a run directory resolves to its export or last.ckpt).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: it holds nothing to start from (a run whose weights were not kept, say).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"init_from={path} does not exist")
    if path.is_file():
        if path.suffix == ".ckpt":
            return path
        if path.name in (SPEC, WEIGHTS):
            return path.parent
        raise ValueError(f"init_from={path} is neither a checkpoint (.ckpt), an export nor a run directory")
    for candidate in (path, path / "export"):
        if (candidate / SPEC).is_file():
            return candidate
    if (path / "checkpoints" / "last.ckpt").is_file():
        return path / "checkpoints" / "last.ckpt"
    raise ValueError(f"init_from={path} holds no export (model.json) and no checkpoints/last.ckpt")


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run directory or of a file in its `checkpoints/` folder (else the file's folder)."""
    path = Path(path)
    if path.is_dir():
        return path.parent if path.name == CHECKPOINTS and (path / LAST).is_file() else path
    return path.parent.parent if path.parent.name == CHECKPOINTS else path.parent


def run_config_path(run_dir: str | Path, config: str | Path | None = None) -> Path:
    """The composed config of a run: `config`, else `RUN_DIR/.hydra/config.yaml` (written by Hydra).

    Raises:
        FileNotFoundError: It does not exist (one line saying what it is needed for).
    """
    path = Path(config) if config is not None else Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the run's config is needed to rebuild its model (Hydra writes .hydra/config.yaml "
            "in every run directory; for a run started outside Hydra pass --config)"
        )
    return path


def is_run_dir(path: Path) -> bool:
    """Whether a directory looks like a run's: Hydra's config or a `checkpoints/` folder in it."""
    return (path / RUN_CONFIG).is_file() or (path / CHECKPOINTS).is_dir()


def is_export_dir(path: Path) -> bool:
    """Whether a directory holds an export (`model.safetensors` + `model.json`)."""
    return all((path / name).is_file() for name in EXPORT_FILES)


def _run_hint(path: Path) -> str:
    """`pass the run directory (RUN) or a .ckpt`, naming the run directory that encloses `path` when there is one."""
    for parent in (path.parent, path.parent.parent):
        if parent != path and is_run_dir(parent):
            return f"pass the run directory ({parent}) or a .ckpt"
    return PASS


def _json_kind(data: object, path: Path) -> str:
    if isinstance(data, dict) and data.get("format") == "sparsetrain-export":
        return "an export's model.json"
    if path.name == RESULTS or (isinstance(data, dict) and {"test_acc", "sparsity", "pruner"} <= set(data)):
        return "a run's results.json"
    return "a JSON file"


def _zip_kind(path: Path) -> str | None:
    """None for a torch.save archive holding a `state_dict`, else what the zip is."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if not pickles:
                return "a zip archive but not a torch.save file (no data.pkl)"
            with archive.open(pickles[0]) as f:
                head = f.read(64 << 20)  # the pickle holds names and small values; tensors are separate entries
    except (zipfile.BadZipFile, OSError) as e:
        return f"a damaged torch.save archive (truncated or corrupted: {str(e).splitlines()[0] if str(e) else e})"
    if b"state_dict" not in head:
        return "a torch.save file without a state_dict (not a Lightning checkpoint)"
    return None


def describe(path: str | Path) -> str | None:
    """What a file is when it is not a checkpoint, as a phrase (`"a run's results.json"`); None for a file that
    can be a checkpoint (a torch.save archive with a `state_dict`, or an older torch.save file)."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(_SNIFF)
    if not head:
        return "an empty file"
    if head.startswith(_ZIP):
        return _zip_kind(path)
    if head.startswith(_LEGACY_TORCH):
        return None  # the pre-1.6 torch.save format: only torch.load can look inside
    if len(head) > 8 and head[8:9] == b"{":
        size = int.from_bytes(head[:8], "little")
        if 2 <= size <= path.stat().st_size - 8:
            return "an export's model.safetensors" if path.name == EXPORT_FILES[0] else "a safetensors file"
    if path.suffix.lower() in (".yaml", ".yml"):
        if path.name == RUN_CONFIG.name and path.parent.name == RUN_CONFIG.parent.name:
            return "a run's Hydra config (.hydra/config.yaml)"
        return "a YAML file"
    if head.lstrip()[:1] in (b"{", b"["):
        try:
            return _json_kind(json.loads(path.read_text()), path)
        except (ValueError, UnicodeDecodeError):
            pass
    if head.startswith(b"\x80"):
        return "a pickle that is not a torch.save file"
    return "an unrecognized file (not a torch.save archive)"


def resolve_checkpoint(path: str | Path, what: str = "ckpt_path") -> Path:
    """The Lightning checkpoint a user-given path names, checked without torch.

    Args:
        path: A checkpoint file (any name, e.g. `last.ckpt`, `step001263.ckpt`), a run directory (resolved to
            its `checkpoints/last.ckpt`; the caller says which file it took) or a run's `checkpoints/` folder.
        what: How messages name the path: a config key such as `ckpt_path` gives `ckpt_path=PATH`, a phrase
            such as `export source` gives `export source PATH`, an empty string the bare path.

    Returns:
        The checkpoint file.

    Raises:
        FileNotFoundError: The path does not exist, or a run directory has no `checkpoints/last.ckpt`.
        ValueError: The path is something else (a run's `results.json`, an export or its files, a config,
            a directory that is not a run's, a torch file without a `state_dict`), said in one line.
    """
    path = Path(path)
    label = _label(path, what)
    if not path.exists():
        raise FileNotFoundError(f"{label} does not exist")
    if path.is_dir():
        if is_export_dir(path):
            _refuse(path, label, "an export directory (model.safetensors + model.json)")
        if path.name == CHECKPOINTS and (path / LAST).is_file():
            path = path / LAST
        elif is_run_dir(path):
            ckpts = path / CHECKPOINTS
            if not (ckpts / LAST).is_file():
                present = sorted(p.name for p in ckpts.glob("*.ckpt")) if ckpts.is_dir() else []
                held = f"checkpoints/ holds {', '.join(present)}" if present else "no checkpoint was written"
                raise FileNotFoundError(f"{label} is a run directory without checkpoints/{LAST} ({held})")
            path = ckpts / LAST
        else:
            raise ValueError(
                f"{label} is a directory but not a run directory (no {RUN_CONFIG.as_posix()}, no {CHECKPOINTS}/): "
                + _run_hint(path)
            )
    elif not path.is_file():
        raise ValueError(f"{label} is not a regular file")
    kind = describe(path)
    if kind is not None:
        _refuse(path, label, kind)
    return path


def _refuse(path: Path, label: str, kind: str) -> NoReturn:
    if kind.startswith("a damaged"):
        raise ValueError(f"{label} is {kind}")
    raise ValueError(f"{label} is {kind}, not a checkpoint: {_run_hint(path)}")


__all__ = ["describe", "is_export_dir", "is_run_dir", "resolve_checkpoint", "run_config_path", "run_dir_of"]
