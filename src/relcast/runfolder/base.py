"""Names, errors, JSON and atomic writes of a run folder (used by :class:`RunFolder`)."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RUN_FORMAT = 1  # bump when the run folder layout changes incompatibly
LOCK = ".relcast.lock"
JOURNAL = "update.journal"
STAGED = ".update"  # suffix of a file staged for a journalled commit
LOCK_WAIT_ENV = "RELCAST_LOCK_WAIT"
RUN_MARKERS = ("run.json", LOCK)  # the files that can make a folder a relcast run folder
RUN_KIND = "relcast run folder"  # run.json's "kind": the format marker (with "format")

# What every file of a run folder is (names are relative to the folder).
FILES = {
    "config.yaml": "resolved configuration",
    "run.json": "format version, steps done, timings, data fingerprint",
    "panel.parquet": "the market the run was trained on (updates append to it)",
    "split.json": "train / valid / test dates",
    "data_health.json": "rows the reader masked or repaired",
    "normalization.json": "training-span feature statistics",
    "stage1/model.safetensors": "Stage1 weights (+ model.json: its config and spec)",
    "stage2/booster.json": "LightGBM residual booster",
    "relationships.npz": "relationship features [T, N, K], names, fold of each date",
    "extractor.safetensors": "what the fitted extractor learned (+ extractor.json: its spec)",
    "relationships_values.npy": "data.store memmap: relationships.npz's values, memory-mapped",
    "data_with_relationships.parquet": "own + relationship + calendar features per row",
    "stage3/<name>/model.safetensors": "one folder per Stage3 model (+ model.json, its spec)",
    "predictions.parquet": "test-span predictions of every model",
    "live_predictions.parquet": "forecasts made by `relcast update`",
    "stage3/<name>/stream_state.npz": "a TFT's state after the last update (the next resumes)",
    "metrics.json": "test metrics",
    "backtest.parquet": "portfolio backtests",
    "attention.npz": "Stage1 attention on test dates",
    "importance.json": "Stage3 variable importance",
    "report.html": "the report (plots/ beside it)",
    "logs/": "training curves (CSV); no checkpoints once a step is saved",
}


class RunFolderError(RuntimeError):
    """A run folder that is missing pieces, busy, foreign, or from an incompatible version."""


class RunFolderBusy(RunFolderError):
    """Another process holds the run folder's lock."""


# ----------------------------------------------------------------------------- JSON
def jsonable(obj: Any) -> Any:
    """``obj`` with dataclasses, NumPy values and non-finite floats made JSON-friendly."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def read_json(path: str | Path) -> Any:
    """A JSON file of a run; missing or damaged is a :class:`RunFolderError` naming it."""
    if not Path(path).exists():
        raise RunFolderError(f"missing {path}: run the step that writes it first")
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # edited or damaged by hand
        raise RunFolderError(
            f"{path} is not valid JSON ({exc}); restore it or rerun the step that writes it"
        ) from None


# ----------------------------------------------------------------------------- atomic files
def temp_path(final: str | Path) -> Path:
    """A temporary name next to ``final`` that no other process or call uses:
    ``.<name>.<pid>.<8 hex>.tmp``; the pid is what recovery later recognises as its own."""
    final = Path(final)
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


# .<name>.<pid>.<8 hex>.tmp (atomic_write) or .<name>.<pid>.<8 hex>.update (a staged commit)
_OWN_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.(?:tmp|update)$")


def temp_owner(name: str) -> int | None:
    """The pid in a temporary name relcast makes (:func:`temp_path`, staged files); None for
    any other name."""
    hit = _OWN_TEMP.match(name)
    return int(hit["pid"]) if hit else None


def confined(root: Path, name: str | Path) -> Path:
    """``root / name`` for a name relative to ``root`` that stays inside it: not absolute,
    no ``..``, and no symlinked folder on the way that leads out (the last part may be a
    symlink: writes replace it, never follow it). A :class:`RunFolderError` otherwise."""
    text = str(name)
    parts = Path(text).parts
    if not text or Path(text).is_absolute() or ".." in parts or "\x00" in text:
        raise RunFolderError(
            f"{root}: the name {text!r} leads outside the run folder; relcast never reads or "
            "writes there (a run folder from someone else may be crafted: do not use it)"
        )
    path = root / text
    if len(parts) > 1:
        inside = os.path.realpath(root)
        parent = os.path.realpath(path.parent)
        if parent != inside and not parent.startswith(inside.rstrip(os.sep) + os.sep):
            raise RunFolderError(
                f"{path.parent} is a link to {parent}, outside the run folder {root}; relcast "
                "never writes through it: replace the link by a folder"
            )
    return path


def atomic_write(path: str | Path, data: bytes | Callable[[Path], Any]) -> Path:
    """Write ``data`` (bytes, or a function that writes a given path) to ``path`` atomically.

    The file is created fresh (never through a symlink; mode 0644 less the umask) and renamed
    over ``path``: a symlink at ``path`` is replaced, the file it pointed to is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        if callable(data):
            data(tmp)
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            with os.fdopen(os.open(tmp, flags, 0o644), "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():  # the write failed: leave nothing behind
            tmp.unlink()
    return path


# names the versions before the lock left behind at the top of a run folder (their exact
# names: nothing else of the user's can be mistaken for them)
_LEGACY = re.compile(
    r"^(?:\.panel\.build[\w.-]*|panel\.parquet\.tmp|\.update\.journal\.tmp|\.blockread-\w{8})$"
)


def is_leftover(relative: str, owners: set[int]) -> bool:
    """A file (name relative to the run folder) that relcast recorded as its own and an
    unfinished write left behind: a temporary or staged name carrying the pid of a holder
    that died holding the lock (``owners``), or an exact name of an older version at the top."""
    name = os.path.basename(relative)
    pid = temp_owner(name)
    if pid is not None:
        return pid in owners
    return relative == name and bool(_LEGACY.match(name))
