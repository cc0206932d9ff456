"""The run folder's lock: one writer at a time, an exclusive ``fcntl.flock`` on
``<run>/.relcast.lock`` that the OS releases when its holder dies.

The lock file says who holds it (pid, command, since, the launcher's job) and, after a holder
died holding it, the pids whose temporary files recovery may delete (``pending``): the record
of what relcast wrote. It is opened with ``O_NOFOLLOW``: a symlink there is refused, never
followed (truncating the lock file would otherwise truncate whatever it points to).

Only a secondary rank of a real launcher (torchrun / srun, :func:`relcast.distributed.launched`)
skips the lock, and only while rank 0 of its own job holds it: ``RANK`` or ``LOCAL_RANK`` in
the environment of a plain process (a Kubeflow pod, a shell spawned from a DDP job) never
switches the lock or recovery off.
"""

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


def job_id() -> str | None:
    """The launcher's job this process belongs to (the same on every rank), None without a
    real launcher (more than one process started by torchrun or srun)."""
    from relcast import distributed

    if not distributed.launched():
        return None
    keys = ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID")
    return "|".join([*(os.environ.get(k, "") for k in keys), str(distributed.world_size())])


def secondary_rank(path: Path, timeout: float = 0.0) -> bool:
    """A rank other than 0 of a real launcher whose rank 0 holds ``path``'s lock (waits up to
    ``timeout`` seconds for it to take it): rank 0 writes for all, so this one neither locks
    nor recovers. Environment variables alone never make a secondary rank."""
    job = job_id()
    if job is None:
        return False
    from relcast import distributed

    if distributed.rank() == 0:
        return False
    deadline = time.monotonic() + max(timeout, 60.0)
    while True:
        if read_info(path).get("job") == job and _held(path):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def read_info(path: Path) -> dict:
    """The lock file's record (``{}`` when missing, empty, damaged or not a plain file)."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return {}
    try:
        info = json.loads(os.read(fd, 1 << 16) or b"{}")
    except ValueError:
        info = {}
    finally:
        os.close(fd)
    return info if isinstance(info, dict) else {}


def _held(path: Path) -> bool:
    """Somebody holds ``path``'s lock right now."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _open_lock(lock_path: Path) -> int:
    try:
        return os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if lock_path.is_symlink() or not lock_path.is_file():
            raise RunFolderError(
                f"{lock_path} is a symlink or not a plain file; relcast never writes through "
                "it (a run folder from someone else may be crafted): delete it"
            ) from None
        raise RunFolderError(f"cannot open {lock_path}: {exc}") from None


def write_info(fd: int, info: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


def lock_wait_seconds() -> float:
    """Seconds to wait for another writer: ``RELCAST_LOCK_WAIT`` (default 0, fail at once)."""
    raw = os.environ.get(LOCK_WAIT_ENV, "0") or "0"
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise RunFolderError(f"{LOCK_WAIT_ENV}={raw!r} is not a number of seconds") from None


def holder(path: Path) -> str:
    """``pid N (command ...)`` of the lock's holder, as far as the lock file says."""
    info = read_info(path)
    if "pid" not in info:
        return "another process"
    return f"pid {info.get('pid')} (command {info.get('command')}, since {info.get('since')})"


def acquire(path: Path, command: str, timeout: float) -> tuple[int, set[int]]:
    """The lock file descriptor, locked for ``command`` (waits up to ``timeout`` seconds), and
    the pids whose leftovers are orphans now: a holder that died holding the lock, and those
    it had not cleaned up yet. They stay recorded (``pending``) until :func:`settled`."""
    deadline = time.monotonic() + timeout
    lock_path = path / LOCK
    while True:
        path.mkdir(parents=True, exist_ok=True)
        fd = _open_lock(lock_path)
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
        before = read_info(path)
        pending = {int(p) for p in before.get("pending", []) if str(p).isdigit()}
        if str(before.get("pid", "")).isdigit():  # it died holding the lock
            pending.add(int(before["pid"]))
        pending.discard(os.getpid())
        since = time.strftime("%Y-%m-%dT%H:%M:%S")
        info = {"pid": os.getpid(), "command": command, "since": since, "job": job_id()}
        write_info(fd, {**info, "pending": sorted(pending)})
        return fd, pending


def settled(fd: int) -> None:
    """Recovery is done: the record of orphaned pids is cleared."""
    info = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
    write_info(fd, {k: v for k, v in info.items() if k != "pending"})


def release(path: Path, fd: int, *, remove: bool) -> None:
    """Unlock; ``remove``: delete the folder when the lock file is all it holds."""
    try:
        info = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
        # nobody holds it now; pids not yet cleaned up stay recorded
        write_info(fd, {"pending": info["pending"]} if info.get("pending") else {})
        if not info.get("pending"):
            os.ftruncate(fd, 0)
        if remove and [p.name for p in path.iterdir()] == [LOCK]:
            # the command created the folder and wrote nothing: leave no trace
            (path / LOCK).unlink()
            shutil.rmtree(path, ignore_errors=True)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
