"""Names, errors, JSON and atomic writes of a run folder (used by :class:`RunFolder`)."""

from __future__ import annotations

import json
import os
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
RUN_MARKERS = ("run.json", LOCK)  # a folder holding one of these is a relcast run folder

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
    """A temporary name next to ``final`` that no other process or call uses."""
    final = Path(final)
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | Path, data: bytes | Callable[[Path], Any]) -> Path:
    """Write ``data`` (bytes, or a function that writes a given path) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        if callable(data):
            data(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # the write failed: leave nothing behind
            tmp.unlink()
    return path


def is_leftover(name: str) -> bool:
    """Names only an unfinished write leaves behind (ours, and those of older versions)."""
    if name == LOCK:
        return False
    return (
        (name.startswith(".") and (name.endswith(".tmp") or name.endswith(STAGED)))
        or name.startswith(".panel.build")
        or name.endswith(".parquet.tmp")
        or name == f"{JOURNAL}.tmp"
    )
