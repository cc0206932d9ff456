"""Where a run keeps its market, features and labels: one interface, two implementations,
chosen once when the run context is built (``data.store``).

- :class:`MemoryStore` (``data.store: memory``, the default): the panel is read from
  ``panel.parquet``, features and labels are computed in memory from it.
- :class:`MemmapStore` (``data.store: memmap``): ``prepare`` writes the market a block at a
  time to a file and the features, labels and panel values into ``feature_store/``
  (:mod:`relcast.store.memmap`); every later read maps those files, never the whole arrays.

The rest of the run asks the store, never the config: where the market's values go while
``prepare`` reads them (:meth:`~RunStore.values_path`), how ``panel.parquet`` is written, how
the training-span scalers are fitted, where relationship values go, and whether outputs over
every date should be avoided (:attr:`~RunStore.windowed`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from relcast.data.panel import Panel
from relcast.features.featureset import FeatureSet
from relcast.store.settings import StoreSettings

FEATURE_STORE = "feature_store"
"""The memory-mapped store's folder in the run folder."""
PANEL_SCRATCH = "feature_store.panel.npy"
"""The market's values while ``prepare`` writes the store (moved into it afterwards)."""

FeaturesFor = Callable[[Panel, dict], FeatureSet]
"""``features_for(panel, scalers)``: the run's features of a panel (scalers ``{}``: fit them)."""


class RunStore:
    """The interface; see the module docstring. ``run_dir``: the run folder."""

    by_blocks = False
    """True: large arrays live in files and go a block of dates at a time: model outputs
    are computed over the scoring window only (never ``[T, N, ...]`` of every date), large
    per-date outputs (attention) kept within a byte budget, relationship values extracted
    by blocks into a map beside ``relationships.npz``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)

    def values_path(self) -> Path | None:
        """Where ``prepare`` has the market's values written while reading (None: memory)."""
        return None

    def write_panel(self, panel: Panel) -> Callable[[Path], Any]:
        """The writer of ``panel.parquet`` for :meth:`RunFolder.write`."""
        return panel.to_parquet

    def build(self, panel: Panel, settings: StoreSettings, features_for: FeaturesFor) -> dict:
        """At ``prepare``: fit the training-span scalers (and write what the store keeps);
        returns the scalers ``{group: (names, scaler)}``."""
        raise NotImplementedError

    def panel(self, load: Callable[[], Panel]) -> Panel:
        """The run's panel (``load``: read ``panel.parquet``)."""
        return load()

    def features(self, panel: Panel, features_for: FeaturesFor, scalers: dict) -> FeatureSet:
        return features_for(panel, dict(scalers))

    def labels(self, panel: Panel, horizons: int, delay: int) -> np.ndarray:
        from relcast.features.labels import forward_returns

        return forward_returns(panel, horizons, delay=delay)

    def track(self, array: np.ndarray) -> np.ndarray:
        """``array`` as the run holds it (a memory map's pages are dropped with the store's)."""
        return array

    def close(self) -> None:
        """Stop what the store runs in the background (nothing in memory)."""


class MemoryStore(RunStore):
    """Everything in memory, computed from ``panel.parquet``."""

    def build(self, panel: Panel, settings: StoreSettings, features_for: FeaturesFor) -> dict:
        scalers: dict = {}
        features_for(panel, scalers)  # fits them on the training span
        return scalers


class MemmapStore(RunStore):
    """``feature_store/`` memory maps (:class:`relcast.store.memmap.MemmapFeatureStore`)."""

    by_blocks = True

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(run_dir)
        self.folder = self.dir / FEATURE_STORE
        self._maps = None

    @property
    def maps(self):
        """The :class:`~relcast.store.memmap.MemmapFeatureStore` (opened on first use; a
        pager thread drops its resident pages every second)."""
        if self._maps is None:
            from relcast.store.memmap import MemmapFeatureStore

            self._maps = MemmapFeatureStore(self.folder)
            self._maps.start_pager()
        return self._maps

    def values_path(self) -> Path | None:
        path = self.dir / PANEL_SCRATCH
        path.unlink(missing_ok=True)  # from a prepare that stopped
        return path

    def write_panel(self, panel: Panel) -> Callable[[Path], Any]:
        from relcast.store.sources import write_panel_parquet

        return lambda path: write_panel_parquet(panel, path)  # a block of dates at a time

    def build(self, panel: Panel, settings: StoreSettings, features_for: FeaturesFor) -> dict:
        """Write the features, labels and panel into ``feature_store/`` block by block
        (:func:`relcast.store.build.build_run_store`); returns the scalers it fitted."""
        from relcast.store.build import build_run_store

        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)  # a store of an earlier prepare
        scalers: dict = {}
        build_run_store(self.folder, panel, settings, scalers)
        return scalers

    def panel(self, load: Callable[[], Panel]) -> Panel:
        from relcast.store.sources import load_panel_memmap, panel_is_current

        if not panel_is_current(self.folder, self.dir / "panel.parquet"):
            return load()  # `relcast update` appended dates: the Parquet file is the panel
        panel = load_panel_memmap(self.folder)  # the same float32 values as panel.parquet
        self.maps.track(panel.values)
        return panel

    def features(self, panel: Panel, features_for: FeaturesFor, scalers: dict) -> FeatureSet:
        if not (self.folder / "meta.json").exists():
            return features_for(panel, dict(scalers))
        return self.maps.feature_set()

    def labels(self, panel: Panel, horizons: int, delay: int) -> np.ndarray:
        if not (self.folder / "meta.json").exists():
            return super().labels(panel, horizons, delay)
        return self.maps.labels

    def track(self, array: np.ndarray) -> np.ndarray:
        if isinstance(array, np.memmap):  # its pages go with the store's
            self.maps.track(array)
            return np.asarray(array)  # one ndarray view of the map: Stage3's cache key
        return array

    def close(self) -> None:
        if self._maps is not None:
            self._maps.close()
            self._maps = None


def open_run_store(kind: str, run_dir: str | Path) -> RunStore:
    """The store named by ``data.store`` (``memory`` or ``memmap``)."""
    stores = {"memory": MemoryStore, "memmap": MemmapStore}
    if kind not in stores:
        raise ValueError(f"data.store must be one of {sorted(stores)}, got {kind!r}")
    return stores[kind](run_dir)
