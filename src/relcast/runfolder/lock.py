"""The run folder's lock: one writer at a time, an exclusive ``fcntl.flock`` on
``<run>/.relcast.lock`` that the OS releases when its holder dies."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from relcast.runfolder.base import LOCK, LOCK_WAIT_ENV, RunFolderBusy, RunFolderError

# (resolved path, thread) -> lock file descriptor: a thread holding a folder may take it again
HELD_LOCKS: dict[tuple[str, int], int] = {}


def is_secondary_rank() -> bool:
    """A DDP worker other than global rank 0 (Lightning re-runs the command in each worker):
    rank 0 holds the folder for all of them, so the others neither lock nor recover."""
    return any(int(os.environ.get(k, "0") or 0) > 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def lock_wait_seconds() -> float:
    """Seconds to wait for another writer: ``RELCAST_LOCK_WAIT`` (default 0, fail at once)."""
    raw = os.environ.get(LOCK_WAIT_ENV, "0") or "0"
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise RunFolderError(f"{LOCK_WAIT_ENV}={raw!r} is not a number of seconds") from None


def holder(path: Path) -> str:
    """``pid N (command ...)`` of the lock's holder, as far as the lock file says."""
    try:
        info = json.loads((path / LOCK).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"pid {info.get('pid')} (command {info.get('command')}, since {info.get('since')})"


def acquire(path: Path, command: str, timeout: float) -> int:
    """The lock file descriptor, locked for ``command`` (waits up to ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    lock_path = path / LOCK
    while True:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise RunFolderBusy(
                    f"run folder {path} is in use by {holder(path)}; wait for it "
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


def release(path: Path, fd: int, *, remove: bool) -> None:
    """Unlock; ``remove``: delete the folder when the lock file is all it holds."""
    try:
        os.ftruncate(fd, 0)  # nobody holds it now
        if remove and [p.name for p in path.iterdir()] == [LOCK]:
            # the command created the folder and wrote nothing: leave no trace
            (path / LOCK).unlink()
            shutil.rmtree(path, ignore_errors=True)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
