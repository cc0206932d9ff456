"""Safe persistence of a run folder: tensors in safetensors, everything else in JSON/Parquet.

Nothing is ever unpickled: model weights are safetensors files, configs are JSON, LightGBM
boosters are LightGBM's own text format. Every write goes to a temporary file first and is
renamed into place, so a crash never leaves a half-written artefact under its real name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from relcast.runfolder import RUN_FORMAT, RunFolderError, atomic_write, jsonable, read_json
from relcast.runfolder.formats import (
    dataclass_from_dict,
    load_state,
    read_relationships,
    relationships_npz,
    save_module,
)

__all__ = [
    "RUN_FORMAT",
    "RunFolderError",
    "atomic_write_bytes",
    "dataclass_from_dict",
    "load_state",
    "jsonable",
    "read_json",
    "read_relationships",
    "relationships_npz",
    "save_module",
    "write_json",
]


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` under a per-process temporary name, then rename it into place."""
    return atomic_write(path, data)


def write_json(path: Path, obj: Any) -> Path:
    return atomic_write_bytes(path, json.dumps(jsonable(obj), indent=2).encode())
