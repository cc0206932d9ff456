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

from relcast.fingerprint import data_changes, data_fingerprint, data_paths, panel_hashes
from relcast.runfolder.base import (
    FILES,
    JOURNAL,
    LOCK,
    LOCK_WAIT_ENV,
    RUN_FORMAT,
    RUN_KIND,
    RUN_MARKERS,
    STAGED,
    RunFolderBusy,
    RunFolderError,
    atomic_write,
    confined,
    jsonable,
    read_json,
    temp_path,
)
from relcast.runfolder.folder import RunFolder

__all__ = [
    "FILES", "JOURNAL", "LOCK", "LOCK_WAIT_ENV", "RUN_FORMAT", "RUN_KIND", "RUN_MARKERS", "STAGED",
    "RunFolder", "RunFolderBusy", "RunFolderError", "atomic_write", "confined", "data_changes",
    "data_fingerprint", "data_paths", "jsonable", "panel_hashes", "read_json", "temp_path",
]  # fmt: skip
