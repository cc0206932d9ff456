"""The data half of a run: the market, its split, features, labels and their scalers, as
:class:`RunData` reads and caches them from the run folder (``prepare`` writes them).
:class:`~relcast.pipeline.Pipeline` subclasses it and adds the training and evaluation steps.

Files of this half: ``config.yaml``, ``run.json``, ``panel.parquet``, ``split.json``,
``data_health.json``, ``normalization.json`` and (``data.store: memmap``) ``feature_store/``,
all written through :class:`~relcast.runfolder.RunFolder`.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Self

import numpy as np

from relcast import distributed
from relcast.config import RelcastConfig, check_trainer
from relcast.data.panel import Panel, RelcastDataError
from relcast.features.normalize import scalers_to_dict
from relcast.runfolder import (
    RUN_FORMAT,
    RunFolder,
    RunFolderError,
    data_changes,
    data_fingerprint,
    data_paths,
    read_json,
)
from relcast.source import check_universe, load_source

FEATURE_STORE = "feature_store"  # data.store: memmap (relcast.training.store)
PANEL_SCRATCH = "feature_store.panel.npy"  # the market's values while prepare writes the store
NORMALIZATION = "normalization.json"  # training-span feature statistics (features.normalize)


def return_freed_memory() -> None:
    """Give the heap that freed arrays left behind back to the OS (glibc's ``malloc_trim``;
    a no-op elsewhere): without it, a step's freed temporaries stay in the process's RSS and
    the next step's peak stands on them (measured at 1,000 x 100,000: report's peak RSS was
    4.4 GiB after evaluate in the same process, 3.1 GiB in a fresh one)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (AttributeError, OSError, TypeError):
        pass  # not glibc


def _log(msg: str) -> None:
    if distributed.is_main():  # one voice per run, also under torchrun
        print(f"[relcast] {msg}", flush=True)


def _writes(step: str):
    """Run the method holding the run folder's lock (one writer per folder; re-entrant)."""

    def decorate(method):
        @functools.wraps(method)
        def locked(self, *args, **kwargs):
            with self.folder.lock(step):
                return method(self, *args, **kwargs)

        return locked

    return decorate


class RunData:
    """The data of one run folder: panel, split, features, labels (read once, cached).
    ``prepare()`` writes them; every other property reads what it wrote."""

    def __init__(self, config: RelcastConfig, run_dir: str | Path) -> None:
        self.config = config
        self.dir = Path(run_dir)
        self.folder = RunFolder(self.dir)
        self._cache: dict[str, Any] = {}

    # ------------------------------------------------------------------ bookkeeping
    @classmethod
    def open(cls, run_dir: str | Path) -> Self:
        """An existing run folder, with the configuration it was run with."""
        from relcast.config import load_config

        run_dir = Path(run_dir)
        info = RunFolder(run_dir).read_json("run.json")
        RunFolder(run_dir).recover_if_free()  # finish an interrupted update, drop leftovers
        if info.get("format") != RUN_FORMAT:
            raise RunFolderError(
                f"{run_dir} was written by an incompatible relcast (run format "
                f"{info.get('format')}, this version reads {RUN_FORMAT})"
            )
        return cls(load_config(file=run_dir / "config.yaml"), run_dir)

    def _info(self) -> dict:
        return self.folder.run_info()

    def _mark(self, step: str, seconds: float, **extra: Any) -> None:
        info = self._info()
        info["steps"][step] = {"seconds": round(seconds, 2), **extra}
        self.folder.write_json("run.json", info)

    def done(self, step: str) -> bool:
        return step in self._info()["steps"]

    # ------------------------------------------------------------------ data
    @_writes("prepare")
    def prepare(self) -> None:
        """Load the market, split it chronologically and write the panel + split."""
        from relcast.features.splits import chronological_split, split_by_end_dates

        start = time.perf_counter()
        memmap = self.config.data.store == "memmap"
        # a memmap run's market goes to a file a block at a time (moved into the store later)
        scratch = self.dir / PANEL_SCRATCH if memmap else None
        if scratch is not None:
            scratch.unlink(missing_ok=True)  # from a prepare that stopped
        panel = load_source(self.config, scratch)  # bad data fails here, before anything is written
        need = self.config.stage3.lookback + 60 + 3 * self.config.embargo
        if panel.num_dates < need:
            raise RelcastDataError(
                f"{self.config.data.source}: {panel.num_dates} dates, but lookback "
                f"{self.config.stage3.lookback} + 60 warm-up bars + embargoes need at least "
                f"{need}; use more data or a shorter stage3.lookback"
            )
        check_universe(panel, self.config)
        # a device this machine lacks fails now, not later (as Lightning sees it under torchrun)
        check_trainer(distributed.trainer_settings(self.config.trainer))
        ends = {k: getattr(self.config.split, k) for k in ("train_end", "valid_end", "test_end")}
        # a label at t reads close[t + delay + H]: that many dates separate the spans
        embargo = self.config.embargo + self.config.data.label_delay
        try:
            if ends["train_end"] is not None or ends["valid_end"] is not None:
                split = split_by_end_dates(panel.dates, **ends, embargo=embargo)  # dates win
            else:
                split = chronological_split(
                    panel.dates,
                    valid_frac=self.config.split.valid_frac,
                    test_frac=self.config.split.test_frac,
                    embargo=embargo,
                )
        except ValueError as exc:
            if any(ends.values()):
                from relcast.config import RelcastConfigError  # noqa: F811 (a config mistake)

                raise RelcastConfigError(
                    f"split.train_end/valid_end/test_end on {self.config.data.source}: {exc}"
                ) from None
            raise RelcastDataError(f"{self.config.data.source}: cannot split: {exc}") from None
        self.folder.write("config.yaml", self.config.to_yaml().encode())
        if memmap:  # the long table written a block of dates at a time
            from relcast.training.store_sources import write_panel_parquet

            self.folder.write("panel.parquet", lambda path: write_panel_parquet(panel, path))
        else:
            self.folder.write("panel.parquet", panel.to_parquet)
        if panel.health is not None:  # what the reader masked or repaired, by reason and symbol
            self.folder.write_json("data_health.json", panel.health.to_dict())
            if panel.health.totals():
                counts = panel.health.totals().items()
                _log("data health: " + ", ".join(f"{r} {n}" for r, n in counts))
        self.folder.save_split(split)
        self._cache.clear()
        # fitted once on the training span and saved: predict/update scale new data with them
        if memmap:  # the store's builder fits them, without the [T, N, F] array in memory
            scalers = self._build_feature_store(panel, int(split.train[-1]))
        else:
            scalers = self.feature_scalers
        self.folder.write_json(NORMALIZATION, scalers_to_dict(scalers))
        self._mark(
            "prepare",
            time.perf_counter() - start,
            dates=panel.num_dates,
            symbols=panel.num_symbols,
            fingerprint=data_fingerprint(self._data_paths(), panel),
        )
        _log(f"prepared {panel!r}")

    def _data_paths(self) -> list[Path]:
        return data_paths(self.config.data.source, self.config.data.universe)

    def check_resumable(self) -> None:
        """Refuse to resume a run whose config or input data changed since ``prepare``."""
        from relcast.config import load_config

        if load_config(file=self.dir / "config.yaml") != self.config:
            raise RunFolderError(
                f"{self.dir} holds a run with a different config; use another --out or --force"
            )
        recorded = self._info()["steps"]["prepare"].get("fingerprint")
        change = data_changes(recorded, self._data_paths(), lambda: load_source(self.config))
        if change:
            raise RunFolderError(
                f"the data of {self.dir} changed since it was prepared ({change}); its "
                "results belong to the old data: rerun with --force to redo every step, "
                "or use another --out"
            )

    @property
    def panel(self) -> Panel:
        if "panel" not in self._cache:
            from relcast.training.store_sources import load_panel_memmap, panel_is_current

            store = self.dir / FEATURE_STORE
            memmap = self.config.data.store == "memmap"
            if memmap and panel_is_current(store, self.dir / "panel.parquet"):
                # values memory-mapped from the store: the same float32 values as panel.parquet
                # (after `relcast update` appended dates, the Parquet file is read instead)
                self._cache["panel"] = load_panel_memmap(self.dir / FEATURE_STORE)
                self.feature_store.track(self._cache["panel"].values)
            else:
                self._cache["panel"] = self.folder.load_panel()
        return self._cache["panel"]

    @property
    def split(self):
        if "split" not in self._cache:
            self._cache["split"] = self.folder.load_split(self.panel.dates)
        return self._cache["split"]

    @property
    def train_end(self) -> np.datetime64:
        return self.panel.dates[self.split.train[-1]]

    def features_for(self, panel: Panel, scalers: dict | None = None):
        """Features of any panel on the run's symbols, scaled with the statistics of the
        training span (:attr:`feature_scalers`); ``scalers={}`` fits them (and fills it)."""
        from relcast.features.build import build_features

        r = self.config.relationships
        return build_features(
            panel,
            train_end=self.train_end,
            regime_window=r.regime_window if r.regime else None,
            alpha158=self.config.data.alpha158,
            scalers=dict(self.feature_scalers) if scalers is None else scalers,
        )

    @property
    def feature_scalers(self) -> dict:
        """Normalisation statistics of the training span, ``{group: (names, scaler)}``:
        fitted once at ``prepare`` and saved in ``normalization.json``."""
        if "scalers" not in self._cache:
            from relcast.features.normalize import scalers_from_dict

            path = self.dir / NORMALIZATION
            if path.exists():
                try:
                    self._cache["scalers"] = scalers_from_dict(read_json(path))
                except (KeyError, TypeError, ValueError) as exc:
                    raise RunFolderError(
                        f"{path} is damaged ({exc}); rerun `relcast run --force` to rebuild it"
                    ) from None
            else:  # fitted on the run's own panel, whose training span is the run's
                scalers: dict = {}
                self._cache["features"] = self.features_for(self.panel, scalers=scalers)
                self._cache["scalers"] = scalers
        return self._cache["scalers"]

    @property
    def features(self):
        if "features" not in self._cache:
            if self.config.data.store == "memmap":  # values: the store's memory map
                self._cache["features"] = self.feature_store.feature_set()
            else:
                self._cache["features"] = self.features_for(self.panel)
        return self._cache["features"]

    @property
    def feature_store(self):
        """The run's :class:`~relcast.training.store.MemmapFeatureStore` (``data.store:
        memmap``): features and labels that Stage1, extraction, Stage3 and evaluation read."""
        if "store" not in self._cache:
            from relcast.training.store import MemmapFeatureStore

            store = self._cache["store"] = MemmapFeatureStore(self.dir / FEATURE_STORE)
            store.start_pager()  # resident pages of every map dropped every second
        return self._cache["store"]

    def _build_feature_store(self, panel: Panel, train_end: int) -> dict:
        """Write the features, labels and panel into ``feature_store/`` (rank 0, at
        ``prepare``) block by block (:func:`relcast.training.run_store.build_run_store`);
        returns the training-span statistics it fitted."""
        import shutil

        from relcast.training.run_store import build_run_store
        from relcast.training.stage1 import encode_sectors

        sectors, _ = encode_sectors(panel.sectors, panel.num_symbols)
        folder = self.dir / FEATURE_STORE
        shutil.rmtree(folder, ignore_errors=True)  # a store of an earlier prepare
        r, scalers = self.config.relationships, {}
        build_run_store(
            folder, panel, train_end=train_end, horizons=self.config.data.horizons,
            label_delay=self.config.data.label_delay, sector_ids=sectors, scalers=scalers,
            regime_window=r.regime_window if r.regime else None, alpha158=self.config.data.alpha158,
        )  # fmt: skip
        for key in ("features", "labels", "store", "panel"):
            self._cache.pop(key, None)  # every later read goes through the store
        return scalers

    @property
    def labels(self) -> np.ndarray:
        if "labels" not in self._cache and self.config.data.store == "memmap":
            if (self.dir / FEATURE_STORE / "meta.json").exists():
                self._cache["labels"] = self.feature_store.labels
        if "labels" not in self._cache:
            from relcast.features.labels import forward_returns

            self._cache["labels"] = forward_returns(
                self.panel, self.config.data.horizons, delay=self.config.data.label_delay
            )
        return self._cache["labels"]

    @property
    def stage1_labels(self) -> np.ndarray:
        """The first ``stage1.horizons`` horizons of :attr:`labels`: what Stage1 learns."""
        return self.labels[..., : min(self.config.stage1.horizons, self.labels.shape[2])]

    @property
    def target(self) -> np.ndarray:
        """``bool [N]``: stocks that count in losses and metrics (indices do not)."""
        return ~self.panel.is_index
