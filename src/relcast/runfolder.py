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
import hashlib
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
        from relcast.persist import jsonable

        return self.write(name, json.dumps(jsonable(obj), indent=2).encode())

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


# ----------------------------------------------------------------------------- fingerprint
def data_paths(source: str, universe: str | None = None) -> list[Path]:
    """The input files a data source reads (none for the bundled ``demo`` and ``synthetic``)."""
    paths: list[Path] = []
    if source not in ("demo", "synthetic"):
        root = Path(source)
        if root.is_dir():
            paths += sorted(p for p in root.rglob("*") if p.is_file())
        else:
            paths.append(root)
    if universe:
        paths.append(Path(universe))
    return paths


def _file_stats(paths: list[Path]) -> list[dict]:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        except OSError:
            out.append({"path": str(p.resolve()), "size": None, "mtime_ns": None})
    return out


def panel_hashes(panel) -> dict[str, str]:
    """SHA-256 of the market's dates and symbols, and of its values and mask."""
    import numpy as np

    keys = hashlib.sha256()
    keys.update(np.asarray(panel.dates, dtype="datetime64[ns]").astype("int64").tobytes())
    keys.update("\n".join(str(s) for s in panel.symbols).encode())
    values = hashlib.sha256()
    values.update(np.ascontiguousarray(panel.values, dtype=np.float64).tobytes())
    values.update(np.ascontiguousarray(panel.mask).tobytes())
    values.update("\n".join(panel.fields).encode())
    return {"dates_symbols": keys.hexdigest(), "values": values.hexdigest()}


def data_fingerprint(paths: list[Path], panel) -> dict:
    """What ``prepare`` records: each input file's size and mtime, and the panel's hashes."""
    return {"files": _file_stats(paths), **panel_hashes(panel)}


def data_changes(recorded: dict | None, paths: list[Path], load: Callable[[], Any]) -> str | None:
    """How the data differs from ``recorded`` (None: unchanged, or no fingerprint recorded).

    Files with the same size and mtime are taken as unchanged without reading them; when a
    file differs, ``load()`` reads the market and its hashes decide (a file that was only
    touched or copied is not a change).
    """
    if not recorded:
        return None  # a run from before fingerprints: nothing to compare with
    now = _file_stats(paths)
    if now == recorded.get("files"):
        return None
    before = {f["path"]: f for f in recorded.get("files", [])}
    after = {f["path"]: f for f in now}
    changed = sorted(p for p in after.keys() & before.keys() if after[p] != before[p])
    added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
    try:
        hashes = panel_hashes(load())
    except Exception as exc:  # the data no longer reads: a change, say why
        hashes = {"error": str(exc)}
    if all(hashes.get(k) == recorded.get(k) for k in ("dates_symbols", "values")):
        return None
    parts = []
    for label, names in (("changed", changed), ("new", added), ("gone", removed)):
        if names:
            shown = ", ".join(Path(n).name for n in names[:3])
            parts.append(
                f"{label}: {shown}" + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
            )
    if "error" in hashes:
        what = f"it no longer reads ({hashes['error']})"
    elif hashes["dates_symbols"] != recorded.get("dates_symbols"):
        what = "its dates or symbols differ"
    else:
        what = "its prices or volumes differ"
    return f"{'; '.join(parts) or 'input files differ'}; {what}"
