"""``relcast`` as one process of a torchrun launch, recording the files it writes.

    torchrun --standalone --nproc_per_node=2 tests/ddp_run_script.py LOG_DIR run --out ...

Run by ``tests/test_ddp_pipeline.py``. Every way the pipeline and Lightning write a file goes
through ``open``/``io.open`` with a writing mode, ``os.open`` with a writing flag, or
``os.replace``/``os.rename`` (atomic writes, Parquet and checkpoints included); this script
wraps them and saves the written paths of this rank in ``LOG_DIR/rank<R>.json`` at exit.
"""

from __future__ import annotations

import atexit
import builtins
import io
import json
import os
import runpy
import sys
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def main() -> None:
    log_dir = Path(sys.argv[1])
    rank = os.environ.get("RANK", "0")
    written: list[str] = []
    real_open, real_os_open = builtins.open, os.open
    real_replace, real_rename = os.replace, os.rename

    def record(path) -> None:
        if isinstance(path, (str, os.PathLike)):
            written.append(os.path.abspath(os.fspath(path)))

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            record(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & WRITE_FLAGS:
            record(path)
        return real_os_open(path, flags, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        record(dst)
        return real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        record(dst)
        return real_rename(src, dst, *args, **kwargs)

    builtins.open = io.open = open_
    os.open, os.replace, os.rename = os_open, replace, rename

    def save() -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"rank{rank}.json").write_bytes(json.dumps(written).encode())

    atexit.register(save)
    sys.argv = ["relcast", *sys.argv[2:]]
    runpy.run_module("relcast", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
