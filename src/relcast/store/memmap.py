"""Memory-mapped feature storage: train Stage1 and Stage3 on panels larger than RAM.

A :class:`MemmapFeatureStore` is a folder of ``.npy`` files (``numpy.lib.format.open_memmap``)
that the training code reads through memory maps, so only the pages a batch touches are
brought in from disk:

    meta.json       symbols, feature names and groups, horizons, whether writing finished
    dates.npy       datetime64[ns] [T]
    values.npy      float32 [N, T, F]   features, NaN where masked (stock-major, see below)
    values_by_date.npy  float32 [T, N, F]   the same, time-major (Stage1, extraction, LightGBM)
    mask.npy        bool    [T, N]      True where every feature is defined
    labelled.npy    bool    [T, N]      mask and a finite label for every horizon
    labels.npy      float32 [T, N, H]   forward returns (relcast.features.labels.forward_returns)
    targets.npy     float32 [T, N, H]   labels z-scored across the valid stocks of each date
    sector_ids.npy  int64   [N]

Features are stored **stock-major** ``[N, T, F]``: a Stage3 window (``lookback`` steps of one
stock) is one contiguous block of ``L * F`` floats, about 4 pages, where the time-major
``[T, N, F]`` layout would spread it over L pages (a batch of 4096 windows of 120 steps then
touches ~2 GB of pages instead of ~80 MB). Stage1 reads a date's cross-section, N short
pieces, which is cheap either way. :attr:`MemmapFeatureStore.values` is the ``[T, N, F]``
view of the same file (no copy), so a store looks like a :class:`FeatureSet` to Stage1.

The store is written in chunks of dates (:meth:`MemmapFeatureStore.write`), by
:func:`build_feature_store` from any source that can return the bars of a date range: each
chunk's features are computed with ``overlap`` earlier dates of history so indicators are
warmed up (equal to the in-memory features once the overlap covers the longest window and the
EMAs' memory), and index / calendar features, which are a few columns per date, are computed
once over all dates with the training-span statistics. Labels and their cross-sectional
z-scores are per-date quantities, so chunks give them exactly.

Resident memory: pages read through a memory map count in the process's RSS until the kernel
reclaims them; :meth:`MemmapFeatureStore.release` drops them (``madvise(MADV_DONTNEED)``),
and :func:`release_pages_callback` does it every few training batches, which keeps RSS bounded
by what a few batches touch plus the loaders' index arrays.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from relcast.data.panel import Panel, RelcastDataError, memory_map_of, release_pages
from relcast.features.build import DEFAULT_WINDOWS, build_features
from relcast.features.featureset import FeatureSet
from relcast.features.labels import forward_returns, normalize_labels_cross_section
from relcast.store.settings import StoreSettings
from relcast.store.sources import index_context

STORE_VERSION = 1
ARRAYS = ("values", "values_by_date", "mask", "labelled", "labels", "targets")
LAYOUT = dict(values="N,T,F", values_by_date="T,N,F", mask="T,N", labelled="T,N", labels="T,N,H")
OPTIONAL = ("values_by_date",)  # stores written before it have none


class MemmapFeatureStore:
    """Features, mask and labels of a panel as memory-mapped ``.npy`` files in ``folder``.

    Open an existing store with ``MemmapFeatureStore(folder)``; make a new one with
    :meth:`create` then :meth:`write` chunks of dates and :meth:`finish`.

    Attributes:
        folder: the store's folder.
        dates, symbols: ``[T]``, ``[N]``.
        names, groups: feature names (the F axis) and their groups, as in a FeatureSet.
        horizons: H.
        sector_ids: ``int64 [N]``.
        values_by_stock: ``float32 [N, T, F]`` memmap (Stage3's windows).
        values_by_date: ``float32 [T, N, F]`` memmap, the same values time-major (a date's
            cross-section is one block: what Stage1, extraction and LightGBM read), or None.
        mask: ``bool [T, N]`` memmap.
        labelled: ``bool [T, N]`` memmap, ``mask`` and finite labels at every horizon.
        labels, targets: ``float32 [T, N, H]`` memmaps.
    """

    def __init__(self, folder: str | Path, *, writable: bool = False) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.exists():
            raise RelcastDataError(f"{self.folder}: not a feature store (no meta.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != STORE_VERSION:
            raise RelcastDataError(
                f"{meta_path}: store version {meta.get('version')}, expected {STORE_VERSION}"
            )
        if not writable and not meta.get("complete", False):
            raise RelcastDataError(
                f"{self.folder}: the store was not finished (writing stopped early); rebuild it"
            )
        self.symbols = np.asarray(meta["symbols"])
        self.names = list(meta["names"])
        self.groups = {k: list(v) for k, v in meta["groups"].items()}
        self.horizons = int(meta["horizons"])
        self.dates = np.load(self.folder / "dates.npy")
        self.sector_ids = np.load(self.folder / "sector_ids.npy")
        # "c" (copy-on-write) is writable from numpy's side, so torch.as_tensor takes it
        # without a warning and without a copy, while the files are never modified.
        mode = "r+" if writable else "c"
        for name in ARRAYS:
            path = self.folder / f"{name}.npy"
            if name in OPTIONAL and not path.exists():
                setattr(self, name, None)
                continue
            setattr(self, _attr(name), np.load(path, mmap_mode=mode))

    # ------------------------------------------------------------------ create / write
    @classmethod
    def create(
        cls,
        folder: str | Path,
        dates: np.ndarray,
        symbols: Sequence[str],
        names: Sequence[str],
        groups: dict[str, list[str]],
        horizons: int,
        *,
        sector_ids: np.ndarray | None = None,
        overwrite: bool = False,
    ) -> MemmapFeatureStore:
        """Allocate the files of an empty store (features NaN, mask False) and open it."""
        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{folder} is not empty; pass overwrite=True to replace it")
            if not (folder / "meta.json").exists():
                raise FileExistsError(f"{folder} holds files that are not a store; not touching")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        dates = np.asarray(dates, dtype="datetime64[ns]")
        T, N, F, H = len(dates), len(symbols), len(names), int(horizons)
        sector_ids = np.zeros(N, np.int64) if sector_ids is None else np.asarray(sector_ids)
        np.save(folder / "dates.npy", dates)
        np.save(folder / "sector_ids.npy", sector_ids.astype(np.int64))
        shapes = {
            "values": ((N, T, F), np.float32),
            "values_by_date": ((T, N, F), np.float32),
            "mask": ((T, N), np.bool_),
            "labelled": ((T, N), np.bool_),
            "labels": ((T, N, H), np.float32),
            "targets": ((T, N, H), np.float32),
        }
        for name, (shape, dtype) in shapes.items():
            # open_memmap writes a sparse file: no disk is used until pages are written
            array = open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
            del array
        meta = {
            "version": STORE_VERSION,
            "symbols": [str(s) for s in symbols],
            "names": list(names),
            "groups": {k: list(v) for k, v in groups.items()},
            "horizons": H,
            "layout": LAYOUT,
            "written_until": 0,
            "complete": False,
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
        return cls(folder, writable=True)

    def write(self, start: int, values: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> None:
        """Write dates ``start .. start + len(values) - 1``.

        Args:
            values: ``float [t, N, F]`` (time-major, like a FeatureSet); NaN where masked.
            mask: ``bool [t, N]``.
            labels: ``float [t, N, H]`` forward returns; ``targets`` are computed from them.
        """
        values = np.asarray(values, dtype=np.float32)
        t = len(values)
        N, T, F = self.values_by_stock.shape
        if values.shape != (t, N, F) or mask.shape != (t, N):
            raise ValueError(
                f"chunk has values {values.shape} and mask {mask.shape}, expected "
                f"({t}, {N}, {F}) and ({t}, {N})"
            )
        if labels.shape != (t, N, self.horizons):
            raise ValueError(f"labels {labels.shape}, expected ({t}, {N}, {self.horizons})")
        if not 0 <= start <= T - t:
            raise ValueError(f"chunk of {t} dates at {start} does not fit in {T} dates")
        mask = np.asarray(mask, dtype=bool)
        clean = np.where(mask[..., None], values, np.nan)  # (t, N, F)
        self.values_by_stock[:, start : start + t] = clean.transpose(1, 0, 2)  # (N, t, F)
        if self.values_by_date is not None:
            self.values_by_date[start : start + t] = clean
        self.mask[start : start + t] = mask
        self.labelled[start : start + t] = mask & np.isfinite(labels).all(axis=-1)
        self.labels[start : start + t] = labels
        self.targets[start : start + t] = normalize_labels_cross_section(labels, mask)

    def finish(self) -> MemmapFeatureStore:
        """Flush the files, mark the store complete and reopen it read-only."""
        self.flush()
        meta_path = self.folder / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["complete"] = True
        meta_path.write_text(json.dumps(meta, indent=1))
        self.close()
        return MemmapFeatureStore(self.folder)

    # ------------------------------------------------------------------ views
    @property
    def values(self) -> np.ndarray:
        """``float32 [T, N, F]``: the time-major file, else a strided view of the stock-major
        one (no copy either way). Reading a date's cross-section from the stock-major file
        maps pages of every stock's history (measured: one date of 1,000 stocks x 10,000 bars
        brought the whole 1.7 GB file into RSS), hence the time-major copy."""
        if self.values_by_date is not None:
            return self.values_by_date
        return self.values_by_stock.transpose(1, 0, 2)

    @property
    def num_dates(self) -> int:
        """T."""
        return len(self.dates)

    @property
    def nbytes(self) -> int:
        """Size of the arrays on disk."""
        return sum(a.nbytes for a in self._arrays())

    def _arrays(self) -> list[np.ndarray]:
        return [a for a in (getattr(self, _attr(name)) for name in ARRAYS) if a is not None]

    def feature_set(self) -> FeatureSet:
        """A :class:`FeatureSet` whose ``values`` is the memory-mapped ``[T, N, F]`` view.

        Its ``mask`` is read into memory (``T * N`` bytes). Use it for Stage1
        (``fit_stage1`` reads one date per item, never the whole array).
        """
        return FeatureSet(
            dates=self.dates,
            symbols=self.symbols,
            names=list(self.names),
            values=self.values,
            mask=np.array(self.mask),
            groups={k: list(v) for k, v in self.groups.items()},
            store=self,  # assemble_inputs then reads Stage3 inputs from the store
        )

    def holds(self, array: Any) -> bool:
        """True if ``array`` is (a view of the whole of) the store's labels or targets."""
        if not isinstance(array, np.ndarray):
            return False
        return any(
            array.shape == own.shape and array.ctypes.data == own.ctypes.data
            for own in (self.labels, self.targets)
        )

    # ------------------------------------------------------------------ memory
    def flush(self) -> None:
        """Write dirty pages to the files (a no-op for a read-only store)."""
        for array in self._arrays():
            if array.mode in ("r+", "w+"):
                array.flush()

    def release(self) -> None:
        """Drop the mapped pages from this process (RSS); the next read maps them again.

        Dirty pages are flushed first; the page cache (the kernel's, shared) is untouched.
        """
        self.flush()
        for array in self._arrays() + self.__dict__.get("_tracked", []):
            release_pages(array)

    def scratch(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 ``shape`` array in a file next to the store, unlinked at once (it lives
        while mapped: no leftover after a crash, one per process under DDP), released with the
        store's maps: a large temporary (Stage3's inputs and targets) off the heap."""
        path = self.folder / f".{name}.{os.getpid()}.{os.urandom(4).hex()}.npy"  # unique per node
        array = open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        os.unlink(path)  # the mapping keeps the data until it is closed
        self.track(array)
        return array

    def track(self, array: np.ndarray) -> None:
        """Release ``array``'s memory map with the store's (a memory-mapped array or a view
        of one: the run's panel, Stage3's hybrid inputs)."""
        if (mapped := memory_map_of(array)) is not None:
            self.__dict__.setdefault("_tracked", []).append(mapped)

    def start_pager(self, interval: float = 1.0) -> None:
        """Call :meth:`release` every ``interval`` seconds in a daemon thread, for as long as the
        store exists: every reader (Stage1's batches, its predictions over all dates, Stage3's
        windows, LightGBM's rows) then keeps at most ~``interval`` seconds of reads resident,
        without a hook of its own. Safe for readers: a dropped page is read again from the file
        (the maps are read-only or shared)."""
        import threading
        import weakref

        if self.__dict__.get("_pager") is not None:
            return
        ref, stop = weakref.ref(self), threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                store = ref()
                if store is None or store.values_by_stock is None:
                    return
                store.release()
                del store

        self._pager = threading.Thread(target=loop, name="relcast-pager", daemon=True)
        weakref.finalize(self, stop.set)
        self._pager.start()

    def close(self) -> None:
        """Flush and unmap the files."""
        self.flush()
        for name in ARRAYS:
            setattr(self, _attr(name), None)

    def __repr__(self) -> str:
        N, T, F = self.values_by_stock.shape
        return (
            f"MemmapFeatureStore({str(self.folder)!r}, T={T}, N={N}, F={F}, H={self.horizons}, "
            f"{self.nbytes / 2**30:.2f} GiB)"
        )


def _attr(name: str) -> str:
    return "values_by_stock" if name == "values" else name


# ----------------------------------------------------------------------------- building
def build_feature_store(
    folder: str | Path,
    source: Callable[[int, int], Panel],
    dates: np.ndarray,
    settings: StoreSettings,
    *,
    chunk_dates: int = 2048,
    overlap: int = 1024,
    windows: Sequence[int] | None = None,
    overwrite: bool = False,
) -> MemmapFeatureStore:
    """Build the features and labels of a panel into a store, one chunk of dates at a time.

    Args:
        folder: the store's folder (created).
        source: ``source(start, stop)`` returns the bars of dates ``start .. stop - 1`` as a
            Panel with the same symbols every time (e.g. read from partitioned Parquet);
            :func:`relcast.store.sources.panel_slices` wraps an in-memory panel. It must
            include at least one market index (``is_index``).
        dates: all T dates of the source.
        settings: ``horizons`` (H of the labels), ``label_delay`` (``data.label_delay``;
            ``forward_returns(delay=...)``), ``train_end`` (last date index of the training
            span: index features' statistics) and ``sector_ids`` (``int [N]`` sector per
            symbol for the store).
        chunk_dates: dates written per chunk; memory grows with ``chunk_dates + overlap``.
        overlap: earlier dates loaded with each chunk to warm up the indicators. It must
            exceed the longest indicator window in traded bars; EMAs converge geometrically
            (after 300 bars the seed's weight in a 26-bar EMA is ~1e-10).
        windows: indicator windows (``build_features``'s default if None).
        overwrite: replace an existing store in ``folder``.

    Returns the finished store, opened read-only.
    """
    windows = DEFAULT_WINDOWS if windows is None else tuple(windows)
    horizons, train_end, label_delay = settings.horizons, settings.train_end, settings.label_delay
    dates = np.asarray(dates, dtype="datetime64[ns]")
    T = len(dates)
    if chunk_dates < 1 or overlap < 0:
        raise ValueError(f"chunk_dates must be >= 1 and overlap >= 0, got {chunk_dates}, {overlap}")

    # Pass 1: index + calendar features over all dates (a few columns per date, fits in RAM)
    ctx, context_groups = index_context(
        source, dates, chunk_dates=chunk_dates, train_end=train_end, windows=windows
    )  # (T, F_ctx)

    # Pass 2: own features and labels, chunk by chunk, with `overlap` dates of history
    store = None
    for a in range(0, T, chunk_dates):
        b = min(T, a + chunk_dates)
        # labels need delay + H dates after b
        lo, hi = max(0, a - overlap), min(T, b + label_delay + horizons)
        panel = source(lo, hi)
        own = build_features(panel, include_index=False, include_calendar=False, windows=windows)
        labels = forward_returns(panel, horizons, delay=label_delay)[a - lo : b - lo]  # (t, N, H)
        values = np.concatenate(
            [
                own.values[a - lo : b - lo],
                np.broadcast_to(ctx[a:b, None], (b - a, *own.mask.shape[1:], ctx.shape[1])),
            ],
            axis=-1,
        )  # (t, N, F_own + F_ctx)
        mask = own.mask[a - lo : b - lo] & np.isfinite(ctx[a:b]).all(axis=1)[:, None]
        if store is None:
            groups = {"own": own.groups["own"], **context_groups}
            store = MemmapFeatureStore.create(
                folder, dates, panel.symbols, [n for g in groups.values() for n in g], groups,
                horizons, sector_ids=settings.sector_ids, overwrite=overwrite,
            )  # fmt: skip
        store.write(a, values, mask, labels)
        store.release()  # written pages leave this process's RSS (they are in the file)
    return store.finish()
