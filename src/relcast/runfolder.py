"""The run folder's owner: file names, atomic writes, one writer at a time, crash recovery,
and the fingerprint of the data a run was prepared from (docs/reliability.md says why).

- Every file is written under ``.<name>.<pid>.<random>.tmp`` and renamed into place.
- Files that change together (``update``) are staged, journalled, then renamed.
- Every writing command holds an exclusive ``fcntl.flock`` on ``<run>/.relcast.lock``; the OS
  releases it when the holder dies. A second writer fails at once naming the holder
  (``RELCAST_LOCK_WAIT=<seconds>`` waits instead).
- Whoever takes the lock first finishes an interrupted update and deletes crash leftovers:
  while it holds the lock no other writer exists, so every temporary file is an orphan.
- A file, or a non-empty folder that is not a run folder, is refused before any write.
- ``prepare`` records the input files' size and mtime and hashes of the market; a rerun on
  changed data stops and asks for ``--force``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from relcast.fingerprint import data_changes, data_fingerprint, data_paths, panel_hashes

__all__ = [
    "FILES", "RunFolder", "RunFolderBusy", "RunFolderError", "atomic_write", "data_changes",
    "data_fingerprint", "data_paths", "jsonable", "panel_hashes", "read_json",
]  # fmt: skip

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
    "stage1/model.safetensors": "Stage1 weights (+ model.json: its config)",
    "stage2/booster.json": "LightGBM residual booster",
    "relationships.npz": "relationship features [T, N, K], names, fold of each date",
    "data_with_relationships.parquet": "own + relationship + calendar features per row",
    "stage3/<name>/model.safetensors": "one folder per Stage3 model",
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


def _is_leftover(name: str) -> bool:
    """Names only an unfinished write leaves behind (ours, and those of older versions)."""
    if name == LOCK:
        return False
    return (
        (name.startswith(".") and (name.endswith(".tmp") or name.endswith(STAGED)))
        or name.startswith(".panel.build")
        or name.endswith(".parquet.tmp")
        or name == f"{JOURNAL}.tmp"
    )


# ----------------------------------------------------------------------------- locking
# (resolved path, thread) -> lock file descriptor: a thread holding a folder may take it again
_HELD: dict[tuple[str, int], int] = {}


def _secondary_rank() -> bool:
    """A DDP worker other than global rank 0 (Lightning re-runs the command in each worker):
    rank 0 holds the folder for all of them, so the others neither lock nor recover."""
    return any(int(os.environ.get(k, "0") or 0) > 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _lock_wait() -> float:
    raw = os.environ.get(LOCK_WAIT_ENV, "0") or "0"
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise RunFolderError(f"{LOCK_WAIT_ENV}={raw!r} is not a number of seconds") from None


class RunFolder:
    """One run folder: its file names, atomic writes, lock, recovery and data fingerprint."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        """The path of a run file by its name relative to the folder (see :data:`FILES`)."""
        return self.path / name

    def is_run_folder(self) -> bool:
        return self.path.is_dir() and any((self.path / m).exists() for m in RUN_MARKERS)

    # ------------------------------------------------------------------ writes
    def write(self, name: str, data: bytes | Callable[[Path], Any]) -> Path:
        """Write one file atomically (bytes, or a function writing the path it is given)."""
        return atomic_write(self.file(name), data)

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write(name, json.dumps(jsonable(obj), indent=2).encode())

    # ------------------------------------------------------------------ typed files
    def has(self, name: str) -> bool:
        return self.file(name).exists()

    def read_json(self, name: str) -> Any:
        return read_json(self.file(name))

    def run_info(self) -> dict:
        """run.json (format, steps done, timings); an empty record before ``prepare``."""
        return self.read_json("run.json") if self.has("run.json") else {
            "format": RUN_FORMAT, "steps": {}}  # fmt: skip

    def save_metrics(self, metrics: dict) -> Path:
        return self.write_json("metrics.json", metrics)

    def load_metrics(self) -> dict:
        if not self.has("metrics.json"):
            raise RunFolderError(
                f"{self.file('metrics.json')} not found: run the evaluate step first "
                "(relcast evaluate RUN)"
            )
        return self.read_json("metrics.json")

    def config_text(self) -> str | None:
        """config.yaml as text (None when missing)."""
        return self.file("config.yaml").read_text() if self.has("config.yaml") else None

    def save_table(self, name: str, frame) -> Path:
        """A pandas DataFrame as Parquet (predictions.parquet, backtest.parquet)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
        return self.write(name, buf.getvalue().to_pybytes())

    def load_table(self, name: str):
        """A Parquet table as a DataFrame (``date`` as datetime); None when missing."""
        import pandas as pd

        if not self.has(name):
            return None
        frame = pd.read_parquet(self.file(name))
        if "date" in frame:
            frame["date"] = pd.to_datetime(frame["date"])
        return frame

    def save_attention(self, dates, symbols, attention) -> Path:
        """attention.npz: dates int64 ns ``[D]``, symbols str ``[N]``, float32 ``[D, N, N]``."""
        import io

        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            dates=np.asarray(dates, dtype="datetime64[ns]").astype("int64"),
            symbols=np.asarray(symbols).astype(str),
            attention=np.asarray(attention, dtype=np.float32),
        )
        return self.write("attention.npz", buf.getvalue())

    def load_attention(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(dates datetime64[ns], symbols, attention)`` from attention.npz; None if missing."""
        if not self.has("attention.npz"):
            return None
        with np.load(self.file("attention.npz"), allow_pickle=False) as z:
            raw = z["dates"]  # int64 ns (as saved) or datetime64
            dates = raw if raw.dtype.kind == "M" else raw.astype("int64").astype("M8[ns]")
            return dates, z["symbols"].astype(str), z["attention"]

    def save_report(self, html_text: str) -> Path:
        return self.write("report.html", html_text.encode("utf-8"))

    def commit(self, files: dict[str, bytes | Callable[[Path], Any]]) -> None:
        """Replace several files together: stage each, journal the renames, apply them."""
        token = f"{os.getpid()}.{secrets.token_hex(4)}"
        pairs = []
        for final, data in files.items():
            final_path = Path(final)
            staged = str(final_path.with_name(f".{final_path.name}.{token}{STAGED}"))
            atomic_write(self.file(staged), data)
            pairs.append((staged, final))
        atomic_write(self.file(JOURNAL), json.dumps(pairs).encode())
        self._replay_journal()

    def _replay_journal(self) -> bool:
        journal = self.file(JOURNAL)
        if not journal.exists():
            return False
        try:
            pairs = json.loads(journal.read_text())
        except ValueError:
            raise RunFolderError(
                f"{journal} is damaged (it is written atomically, so it was edited by hand); "
                "delete it to keep the run as it was before the interrupted update"
            ) from None
        for staged, final in pairs:
            if self.file(staged).exists():
                os.replace(self.file(staged), self.file(final))
        journal.unlink()
        return True

    # ------------------------------------------------------------------ recovery
    def leftovers(self) -> list[Path]:
        """Temporary files of interrupted writes (training logs excluded)."""
        if not self.path.is_dir():
            return []
        found = []
        for root, dirs, names in os.walk(self.path):
            if Path(root) == self.path and "logs" in dirs:
                dirs.remove("logs")
            found += [Path(root) / n for n in names if _is_leftover(n)]
        return sorted(found)

    def recover(self) -> list[Path]:
        """Finish an interrupted update, then delete crash leftovers. Hold the lock."""
        self._replay_journal()
        removed = self.leftovers()
        for path in removed:
            path.unlink(missing_ok=True)
        return removed

    def recover_if_free(self) -> bool:
        """Recover now unless another writer holds the folder (it then owns its files)."""
        if not self.path.is_dir() or self._key() in _HELD or _secondary_rank():
            return False  # not there, or this thread is the writer (mid-operation)
        try:
            with self.lock("recover", timeout=0.0):
                pass  # taking the lock recovers
        except RunFolderBusy:
            return False
        return True

    # ------------------------------------------------------------------ lock
    def _key(self) -> tuple[str, int]:
        return (os.path.realpath(self.path), threading.get_ident())

    def check_writable(self) -> None:
        """Refuse a path that is a file, or a non-empty folder that is not a run folder."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise RunFolderError(
                f"{p} is a file, not a run folder; give --out/--run a folder (new, empty, "
                "or a relcast run folder)"
            )
        if p.is_dir() and not self.is_run_folder() and any(p.iterdir()):
            raise RunFolderError(
                f"{p} is not empty and is not a relcast run folder (no run.json); relcast "
                "does not write over files it did not create: give a new or empty folder"
            )

    def holder(self) -> str:
        """``pid N (command ...)`` of the lock's holder, as far as the lock file says."""
        try:
            info = json.loads(self.file(LOCK).read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info:
            return "another process"
        return f"pid {info.get('pid')} (command {info.get('command')}, since {info.get('since')})"

    @contextlib.contextmanager
    def lock(self, command: str, *, timeout: float | None = None) -> Iterator[RunFolder]:
        """Hold the folder's exclusive lock for ``command``; recover the folder on entry.

        ``timeout``: seconds to wait for another writer (default: ``RELCAST_LOCK_WAIT`` or 0,
        fail at once). Re-entrant within one thread; recovery runs only on the outer entry.
        """
        key = self._key()
        if key in _HELD or _secondary_rank():
            yield self
            return
        self.check_writable()
        created = not self.path.exists()
        fd = self._acquire(command, _lock_wait() if timeout is None else timeout)
        _HELD[key] = fd
        try:
            self.recover()
            yield self
        finally:
            del _HELD[key]
            self._release(fd, remove=created)

    def _acquire(self, command: str, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        lock_path = self.file(LOCK)
        while True:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise RunFolderBusy(
                        f"run folder {self.path} is in use by {self.holder()}; wait for it "
                        f"to finish (or set {LOCK_WAIT_ENV}=<seconds> to wait). A crashed "
                        "holder releases the folder by itself."
                    ) from None
                time.sleep(0.05)
                continue
            # the file we locked may have been unlinked by a holder that removed an empty folder
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            since = time.strftime("%Y-%m-%dT%H:%M:%S")
            info = json.dumps({"pid": os.getpid(), "command": command, "since": since})
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
            return fd

    def _release(self, fd: int, *, remove: bool) -> None:
        try:
            os.ftruncate(fd, 0)  # nobody holds it now
            if remove and [p.name for p in self.path.iterdir()] == [LOCK]:
                # the command created the folder and wrote nothing: leave no trace
                self.file(LOCK).unlink()
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ------------------------------------------------------------------ checkpoints
    def drop_checkpoints(self) -> list[Path]:
        """Delete Lightning's ``.ckpt`` files (pickles) under ``logs/``: call once the weights
        they hold are saved as safetensors (or were only needed during the step)."""
        found = sorted(self.file("logs").rglob("*.ckpt")) if self.file("logs").is_dir() else []
        for path in found:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the empty checkpoints/ folder
        return found
