"""The :class:`RunFolder` class: one run folder's files, writes, lock, recovery."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from relcast.runfolder.base import (
    JOURNAL,
    LOCK,
    RUN_FORMAT,
    RUN_KIND,
    STAGED,
    RunFolderBusy,
    RunFolderError,
    atomic_write,
    confined,
    is_leftover,
    jsonable,
    read_json,
    temp_owner,
)
from relcast.runfolder.lock import (
    HELD_LOCKS,
    acquire,
    holder,
    job_id,
    lock_wait_seconds,
    read_info,
    release,
    secondary_rank,
    settled,
)


class RunFolder:
    """One run folder: its file names, atomic writes, lock, recovery and data fingerprint."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        """The path of a run file by its name relative to the folder (see :data:`FILES`);
        a name that leads outside the folder is a :class:`RunFolderError`."""
        return confined(self.path, name)

    def format_of(self) -> int | None:
        """The run format recorded in run.json (its ``kind`` marker and ``format`` version),
        None when the folder holds no relcast run.json. run.json of the first format, written
        before the marker, counts when it has relcast's layout (``format`` 1, ``steps``)."""
        path = self.path / "run.json"
        if path.is_symlink() or not path.is_file():
            return None
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or not isinstance(info.get("format"), int):
            return None
        legacy = "kind" not in info and info["format"] == 1 and isinstance(info.get("steps"), dict)
        return info["format"] if info.get("kind") == RUN_KIND or legacy else None

    def is_run_folder(self) -> bool:
        """A folder with relcast's run.json (format marker and version), or one that holds
        only the lock file and relcast's own temporary files (a first run that stopped early)."""
        if not self.path.is_dir():
            return False
        if self.format_of() is not None:
            return True
        names = [p.name for p in self.path.iterdir()]
        lock = self.path / LOCK
        return (
            LOCK in names
            and not lock.is_symlink()
            and all(n == LOCK or temp_owner(n) is not None for n in names)
        )

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
        """run.json (marker, format, steps done, timings); an empty record before ``prepare``."""
        info = self.read_json("run.json") if self.has("run.json") else {"steps": {}}
        return {"kind": RUN_KIND, **info, "format": info.get("format", RUN_FORMAT)}

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

        def save(path: Path) -> None:  # straight to the temporary file: no copy in memory
            with open(path, "wb") as fh:  # a file object: numpy adds no ".npz" to the name
                np.savez_compressed(
                    fh,
                    dates=np.asarray(dates, dtype="datetime64[ns]").astype("int64"),
                    symbols=np.asarray(symbols).astype(str),
                    attention=np.asarray(attention, dtype=np.float32),
                )

        return self.write("attention.npz", save)

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

    def load_panel(self):
        """panel.parquet as a :class:`~relcast.data.panel.Panel`."""
        import pyarrow as pa

        from relcast.data.panel import Panel

        path = self.file("panel.parquet")
        if not path.exists():
            raise RunFolderError(f"missing {path}: run `relcast run` to prepare the folder")
        try:
            return Panel.read_parquet(path)
        except (pa.ArrowException, ValueError, KeyError) as exc:
            raise RunFolderError(
                f"{path} is damaged ({exc}); rerun `relcast run --force` to rebuild it"
            ) from None

    def save_split(self, split) -> Path:
        """split.json: date indices of each span, the embargo and each span's first/last date."""
        spans = {"train": split.train, "valid": split.valid, "test": split.test}
        dates = {k: [str(split.dates[i[0]])[:10], str(split.dates[i[-1]])[:10]]
                 for k, i in spans.items()}  # fmt: skip
        return self.write_json("split.json", {**spans, "embargo": split.embargo, "dates": dates})

    def load_split(self, dates):
        """split.json as a :class:`~relcast.features.splits.Split` over ``dates``."""
        from relcast.features.splits import Split

        s = self.read_json("split.json")
        index = {k: np.asarray(s[k], dtype=np.int64) for k in ("train", "valid", "test")}
        return Split(**index, embargo=int(s["embargo"]), dates=dates)

    def save_relationships(self, names, values, mask, fold_of, dates) -> Path:
        """``relationships.npz``; a memory-mapped ``values`` (the ``.npy`` the extraction
        wrote in this folder, ``data.store: memmap``) is renamed into place beside it instead
        of being copied into the archive."""
        from relcast.runfolder.formats import RELATIONSHIP_VALUES, relationships_npz

        mapped = getattr(values, "filename", None) if isinstance(values, np.memmap) else None
        if mapped is not None:
            values.flush()
            os.replace(mapped, self.file(RELATIONSHIP_VALUES))
        else:
            self.file(RELATIONSHIP_VALUES).unlink(missing_ok=True)  # stale from a memmap run
        return self.write(
            "relationships.npz",
            relationships_npz(names, None if mapped else values, mask, fold_of, dates),
        )

    def load_relationships(self) -> dict[str, Any]:
        from relcast.runfolder.formats import read_relationships

        return read_relationships(self.file("relationships.npz"))

    def save_weights(self, name: str, module, config: Any, kind: str, **extra: Any) -> Path:
        """``name`` (e.g. ``stage1/model.safetensors``) + its ``.json`` sidecar."""
        from relcast.runfolder.formats import save_module

        return save_module(self.file(name), module, config, kind, **extra)

    def load_stage1(self):
        """The Stage1 model (eval mode) from stage1/model.safetensors."""
        from relcast.runfolder.formats import load_stage1

        return load_stage1(self.file("stage1/model.safetensors"))

    @staticmethod
    def stage3_weights(name: str) -> str:
        """The weights file of the Stage3 model ``name`` (``stage3/<name>/model.safetensors``;
        its sidecar ``model.json`` beside it): the one place that path is written."""
        return f"stage3/{name}/model.safetensors"

    @staticmethod
    def stage3_stream_state(name: str) -> str:
        """The Stage3 model ``name``'s state after the run's last date
        (:class:`~relcast.training.stream.StreamState`), which ``relcast update`` resumes from."""
        return f"stage3/{name}/stream_state.npz"

    def has_stage3(self, name: str) -> bool:
        return self.has(self.stage3_weights(name))

    def save_stage3(self, name: str, module, config: Any, kind: str, **extra: Any) -> Path:
        """A Stage3 model's weights and sidecar (config, kind, spec, wrapper)."""
        return self.save_weights(self.stage3_weights(name), module, config, kind, **extra)

    def load_stage3(self, name: str):
        """A Stage3 model (eval mode) from its weights file."""
        from relcast.runfolder.formats import load_stage3

        return load_stage3(self.file(self.stage3_weights(name)))

    def stage3_spec(self, name: str) -> dict | None:
        """The spec a Stage3 model was trained with (its sidecar's ``spec``; None: a model
        saved before specs were kept)."""
        info = self.read_json(str(Path(self.stage3_weights(name)).with_suffix(".json")))
        spec = info.get("spec") if isinstance(info, dict) else None
        return spec if isinstance(spec, dict) else None

    def save_extractor(self, extractor, spec: dict) -> Path:
        """``extractor.safetensors``: what the fitted extractor learned, and in
        ``extractor.json`` the spec it was made with."""
        from relcast.runfolder.formats import EXTRACTOR, save_arrays

        return save_arrays(self.file(EXTRACTOR), extractor.fitted_state(), "extractor", spec=spec)

    def load_extractor(self) -> tuple[dict, dict] | None:
        """``(arrays, spec)`` of the saved extractor; None for a run from before it was kept."""
        from relcast.runfolder.formats import EXTRACTOR, load_arrays

        if not self.has(EXTRACTOR):
            return None
        arrays, info = load_arrays(self.file(EXTRACTOR))
        return arrays, info.get("spec") or {}

    def save_booster(self, booster) -> Path:
        """stage2/booster.json (LightGBM's text format inside JSON), written atomically."""
        return self.write("stage2/booster.json", booster.save)

    def load_booster(self):
        """The Stage2 residual booster, None when the run has none."""
        from relcast.models.residual import ResidualBooster

        path = self.file("stage2/booster.json")
        return ResidualBooster.load(path) if path.exists() else None

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
        moves = self._journal_moves(journal, pairs)  # every pair checked before any rename
        for staged, final in moves:
            if staged.exists():
                os.replace(staged, final)
        journal.unlink()
        return True

    def _journal_moves(self, journal: Path, pairs: Any) -> list[tuple[Path, Path]]:
        """The journal's renames, each a staged file of :meth:`commit` (``.<name>.<pid>.<hex>
        .update`` beside ``<name>``) inside the folder; anything else refuses the journal."""
        ok = isinstance(pairs, list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in pairs
        )
        moves = []
        for staged, final in pairs if ok else []:
            s, f = Path(staged), Path(final)
            if (
                s.parent != f.parent
                or temp_owner(s.name) is None
                or not s.name.startswith(f".{f.name}.")
                or not s.name.endswith(STAGED)
            ):
                ok = False
                break
            try:
                moves.append((self.file(staged), self.file(final)))
            except RunFolderError:
                ok = False
                break
        if not ok:
            raise RunFolderError(
                f"{journal} was not written by relcast: it names files that are not staged "
                "files of this run folder, or paths outside it; nothing was renamed. Delete "
                "it if you trust the folder, or do not use a run folder from this source"
            )
        return moves

    # ------------------------------------------------------------------ recovery
    def leftovers(self, owners: set[int] | None = None) -> list[Path]:
        """Temporary files of interrupted writes that relcast recorded as its own: names made
        by :func:`~relcast.runfolder.base.temp_path` or :meth:`commit` carrying the pid of a
        holder that died holding the lock (``owners``; default: those the lock file records),
        and older versions' exact names at the top. Training logs and links are not walked."""
        if not self.is_run_folder():
            return []
        if owners is None:
            pending = read_info(self.path).get("pending", [])
            owners = {int(p) for p in pending if str(p).isdigit()}
        found = []
        for root, dirs, names in os.walk(self.path):
            if Path(root) == self.path and "logs" in dirs:
                dirs.remove("logs")
            rel = Path(root).relative_to(self.path)
            gone = [d for d in dirs if is_leftover(str(rel / d), owners)]  # a block reader's
            found += [Path(root) / d for d in gone if not (Path(root) / d).is_symlink()]
            dirs[:] = [d for d in dirs if d not in gone]
            found += [
                Path(root) / n
                for n in names
                if is_leftover(str(rel / n), owners) and not (Path(root) / n).is_symlink()
            ]
        return sorted(found)

    def recover(self, owners: set[int] | None = None) -> list[Path]:
        """Finish an interrupted update, then delete crash leftovers. Hold the lock."""
        self._replay_journal()
        removed = self.leftovers(owners)
        for path in removed:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return removed

    def _sweep_own(self) -> None:
        """Before the lock goes: this process's own temporary files (a step that failed
        half-way), except staged files a journal still needs."""
        journal = self.file(JOURNAL)
        keep = set()
        if journal.exists():
            with contextlib.suppress(ValueError, OSError, RunFolderError):
                keep = {
                    str(s) for s, _ in self._journal_moves(journal, json.loads(journal.read_text()))
                }
        for path in self.leftovers({os.getpid()}):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif str(path) not in keep:
                path.unlink(missing_ok=True)

    def recover_if_free(self) -> bool:
        """Recover now unless another writer holds the folder (it then owns its files)."""
        from relcast import distributed

        if not self.path.is_dir() or self._key() in HELD_LOCKS or not self.is_run_folder():
            return False  # not there, this thread is the writer (mid-operation), or foreign
        if job_id() is not None and distributed.rank() > 0:
            return False  # a real launcher's rank 0 recovers for its job
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
                f"{p} is not empty and is not a relcast run folder (no run.json with relcast's "
                "format marker); relcast does not write over files it did not create: give a "
                "new or empty folder"
            )
        found = self.format_of()
        if found is not None and found != RUN_FORMAT:
            raise RunFolderError(
                f"{p} was written by another relcast version (run format {found}, this version "
                f"writes {RUN_FORMAT}); give a new folder"
            )

    def holder(self) -> str:
        """``pid N (command ...)`` of the lock's holder, as far as the lock file says."""
        return holder(self.path)

    @contextlib.contextmanager
    def lock(self, command: str, *, timeout: float | None = None) -> Iterator[RunFolder]:
        """Hold the folder's exclusive lock for ``command``; recover the folder on entry.

        ``timeout``: seconds to wait for another writer (default: ``RELCAST_LOCK_WAIT`` or 0,
        fail at once). Re-entrant within one thread; recovery runs only on the outer entry.
        """
        key = self._key()
        wait = lock_wait_seconds() if timeout is None else timeout
        if key in HELD_LOCKS or secondary_rank(self.path, wait):
            yield self
            return
        self.check_writable()
        created = not self.path.exists()
        fd, owners = acquire(self.path, command, wait)
        HELD_LOCKS[key] = fd
        try:
            self.recover(owners)
            settled(fd)
            yield self
        finally:
            del HELD_LOCKS[key]
            try:
                self._sweep_own()
            finally:
                release(self.path, fd, remove=created)

    # ------------------------------------------------------------------ checkpoints
    def drop_stage3(self) -> None:
        """Delete every saved Stage3 model (so that ``relcast stage3`` trains them all again),
        holding the lock."""
        import shutil

        with self.lock("stage3"):
            shutil.rmtree(self.file("stage3"), ignore_errors=True)

    def drop_checkpoints(self) -> list[Path]:
        """Delete Lightning's ``.ckpt`` files (pickles) under ``logs/``: call once the weights
        they hold are saved as safetensors (or were only needed during the step)."""
        found = sorted(self.file("logs").rglob("*.ckpt")) if self.file("logs").is_dir() else []
        for path in found:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the empty checkpoints/ folder
        return found
