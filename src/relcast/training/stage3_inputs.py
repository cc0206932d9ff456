"""Stage3 inputs: :func:`assemble_inputs` picks the input columns of the three feature sets the
design compares (``own``, ``hybrid``, ``rawconcat``: :mod:`relcast.training.stage3`'s docstring)
into a :class:`Stage3Inputs`, whose :meth:`~Stage3Inputs.loader` yields the training batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from relcast.features.featureset import FeatureSet
from relcast.training.loader import Batching, WindowLoader, WindowSource

FEATURE_SETS = ("own", "hybrid", "rawconcat")


@dataclass(eq=False)
class Stage3Inputs:
    """What a Stage3 model reads, per (date, stock), for one feature set.

    Attributes:
        feature_set: ``"own"``, ``"hybrid"`` or ``"rawconcat"``.
        dates, symbols: ``[T]``, ``[N]``.
        values: ``float32 [T, N, F_stock]``, the target stock's own columns at each date (for
            ``rawconcat`` the same as ``own``; the all-stocks block is ``concat``).
        valid: ``bool [T, N]``, every column of ``values`` is defined.
        names: the F_in names of the batch's ``x`` axis (for ``rawconcat``, the every-stock
            block ``cross`` is named by the group ``all_own``).
        groups: name lists per group (``own``, ``index``, ``calendar``, ``relationship``,
            ``all_own``).
        sector_ids: ``int [N]`` sector index of every stock.
        concat: ``float32 [T, N, F_own]`` every stock's own indicators (``rawconcat`` only),
            0 where the stock is not valid.
        sector_labels: the label of each sector id (``sector_labels[sector_ids[n]]``), if
            known: a relational model reads which stocks have no industry from it.
    """

    feature_set: str
    dates: np.ndarray
    symbols: np.ndarray
    values: np.ndarray
    valid: np.ndarray
    names: list[str]
    groups: dict[str, list[str]]
    sector_ids: np.ndarray
    concat: np.ndarray | None = None
    sector_labels: tuple[str, ...] | None = None

    @property
    def num_features(self) -> int:
        """F_in, the width of the model input."""
        return len(self.names)

    @property
    def cross_width(self) -> int:
        """Width of one date's every-stock block (``rawconcat``: ``N * F_own``), else 0."""
        return 0 if self.concat is None else int(np.prod(self.concat.shape[1:]))

    @property
    def num_sectors(self) -> int:
        """Size of the sector embedding table."""
        return int(self.sector_ids.max()) + 1 if len(self.sector_ids) else 1

    def stock_index(self, stocks: Sequence[str | int] | None) -> np.ndarray | None:
        """Stock positions of symbols (or positions passed through); None stays None."""
        if stocks is None:
            return None
        lookup = {s: i for i, s in enumerate(self.symbols)}
        out = []
        for s in stocks:
            if isinstance(s, int | np.integer):
                out.append(int(s))
            elif s in lookup:
                out.append(lookup[s])
            else:
                raise KeyError(f"stock {s!r} is not in the inputs ({len(self.symbols)} symbols)")
        return np.asarray(out, dtype=np.int64)

    def source(self, labels: np.ndarray | None = None) -> WindowSource:
        """The arrays a :class:`~relcast.training.loader.WindowLoader` reads, with ``labels``."""
        return WindowSource(
            self.values, self.valid, labels, sector_ids=self.sector_ids, concat_inputs=self.concat
        )

    def loader(
        self,
        lookback: int,
        labels: np.ndarray | None = None,
        *,
        index: np.ndarray | None = None,
        stocks: Sequence[int] | np.ndarray | None = None,
        require_labels: bool = True,
        **batching: Any,
    ) -> WindowLoader:
        """A :class:`WindowLoader` over these inputs: window batches, or sequence batches with
        ``chunk_length=C``. ``index``, ``stocks``, ``require_labels`` choose the window ends;
        ``batching`` are the fields of :class:`~relcast.training.loader.Batching`."""
        loader = WindowLoader(
            self.source(labels),
            lookback,
            index=index,
            stocks=stocks,
            require_labels=require_labels,
            batching=Batching(**batching),
        )
        assert loader.num_features == self.num_features
        assert loader.cross_width == self.cross_width
        return loader


def _relationship_arrays(relationships: Any, features: FeatureSet) -> tuple[np.ndarray, list[str]]:
    """``(values [T, N, K], names)`` from a relationship store, a FeatureSet or a tuple."""
    if isinstance(relationships, tuple):
        values, names = relationships
    else:
        values = relationships.values
        names = list(relationships.names)
        for attr, want in (("dates", features.dates), ("symbols", features.symbols)):
            have = getattr(relationships, attr, None)
            if have is not None and not np.array_equal(np.asarray(have), np.asarray(want)):
                raise ValueError(
                    f"relationship features have different {attr} than the feature set; "
                    "extract them from a Stage1 model fitted on the same panel"
                )
    values = np.asarray(values, dtype=np.float32)
    T, N = features.mask.shape
    if values.ndim != 3 or values.shape[:2] != (T, N) or values.shape[2] != len(names):
        raise ValueError(
            f"relationship features have shape {values.shape} with {len(names)} names, "
            f"expected ({T}, {N}, K) with K names"
        )
    clash = sorted(set(map(str, names)) & set(features.names))
    if clash:
        raise ValueError(f"relationship feature names clash with feature names: {clash[:5]}")
    return values, [str(n) for n in names]


def assemble_inputs(
    features: FeatureSet,
    relationships: Any = None,
    feature_set: str = "own",
    *,
    sectors: Sequence | np.ndarray | None = None,
) -> Stage3Inputs:
    """Pick the Stage3 input columns for ``feature_set`` (see the module docstring).

    Args:
        features: the feature set with groups ``own`` and, if present, ``index`` and ``calendar``.
        relationships: Stage1 relationship features for ``hybrid``: an object with
            ``values [T, N, K]`` and ``names`` (a relationship store or a FeatureSet), or a
            ``(values, names)`` tuple.
        feature_set: ``"own"``, ``"hybrid"`` or ``"rawconcat"``.
        sectors: sector label of every stock (strings or ints), for the sector embedding.
    """
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {FEATURE_SETS}, got {feature_set!r}")
    if "own" not in features.groups:
        raise ValueError(f"the feature set has no 'own' group; groups: {list(features.groups)}")
    T, N = features.mask.shape
    context = [
        g for g in ("alpha158", "industry", "index", "calendar", "regime") if features.groups.get(g)
    ]
    groups = {g: list(features.groups[g]) for g in ("own", *context)}
    sector_labels = None
    if sectors is None:
        sector_ids = np.zeros(N, dtype=np.int64)
    else:
        sector_labels, sector_ids = np.unique(np.asarray(sectors).astype(str), return_inverse=True)
        sector_labels = tuple(str(s) for s in sector_labels)
        if len(sector_ids) != N:
            raise ValueError(f"sectors has {len(sector_ids)} entries, expected {N} stocks")
    store = features.store  # a MemmapFeatureStore's feature set, or None
    names = [n for g in ("own", *context) for n in groups[g]]
    if store is not None and feature_set != "rawconcat" and names == list(features.names):
        inputs = store_inputs(store, feature_set, relationships, sector_ids=sector_ids)
        inputs.sector_labels = sector_labels
        return inputs
    valid = features.mask.copy()
    concat = None
    values = features.group("own", *context)  # (T, N, F_own + F_index + F_calendar)
    if feature_set == "rawconcat":
        # x keeps the target's own columns: in the every-stock block the target is only a
        # position, which one model shared by all stocks cannot tell apart
        concat = features.group("own")  # (T, N, F_own)
        groups["all_own"] = [f"{s}:{n}" for s in features.symbols for n in groups["own"]]
    elif feature_set == "hybrid":
        if relationships is None:
            raise ValueError(
                "feature_set='hybrid' needs relationship features: pass the Stage1 "
                "relationship store (relcast.relationships.store.build_relationship_store)"
            )
        rel, rel_names = _relationship_arrays(relationships, features)
        valid &= np.isfinite(rel).all(axis=-1)
        values = np.concatenate([values, rel], axis=-1)  # (T, N, F_own... + K)
        names += rel_names
        groups["relationship"] = rel_names
    values = np.ascontiguousarray(values, dtype=np.float32)
    valid &= np.isfinite(values).all(axis=-1)
    if concat is not None:
        # zeros where a stock is masked, once here: every loader then shares this array
        concat = np.array(concat, dtype=np.float32)  # (T, N, F_own), our own copy
        np.nan_to_num(concat, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        concat[~valid] = 0.0
    return Stage3Inputs(
        feature_set=feature_set,
        dates=features.dates,
        symbols=features.symbols,
        values=values,
        valid=valid,
        names=names,
        groups=groups,
        sector_ids=sector_ids.astype(np.int64),
        concat=None if concat is None else np.ascontiguousarray(concat, dtype=np.float32),
        sector_labels=sector_labels,
    )


# ----------------------------------------------------------------------------- from a store
@dataclass(eq=False)
class StockMajorInputs(Stage3Inputs):
    """Stage3 inputs whose values stay in a stock-major ``[N, T, F]`` memory map: ``values``
    is its ``[T, N, F]`` view (no copy), and the loader gathers windows from the map."""

    by_stock: np.ndarray | None = None  # (N, T, F)
    store: Any = None  # the MemmapFeatureStore whose labels it knows

    def source(self, labels: np.ndarray | None = None) -> WindowSource:
        labelled = None
        if labels is not None and self.store is not None and self.store.holds(labels):
            # the store knows where labels are finite: do not read them all
            labelled = np.array(self.store.labelled)
        return WindowSource(
            self.by_stock, self.valid, labels, labelled=labelled,
            sector_ids=self.sector_ids, stock_major=True,
        )  # fmt: skip


def store_inputs(
    store: Any, feature_set: str = "own", relationships: Any = None, *,
    sector_ids: np.ndarray | None = None, block_dates: int = 2048,
) -> StockMajorInputs:  # fmt: skip
    """``own`` or ``hybrid`` inputs of a :class:`~relcast.store.memmap.MemmapFeatureStore`,
    equal to :func:`assemble_inputs` on its features, without a ``[T, N, F]`` array in memory.

    ``own`` reads the store's file itself (every stored column: own, then the per-date
    groups). ``hybrid`` writes own + relationship columns block by block of dates into a
    stock-major file next to the store, unlinked at once (it lives while mapped: no leftover
    after a crash, one per process under DDP); the result is cached on the store for the same
    relationship array. ``sector_ids``: encoded sectors (the store's if None).
    """

    if feature_set not in ("own", "hybrid"):
        raise ValueError(f"a store gives 'own' or 'hybrid' inputs, not {feature_set!r}")
    features = store.feature_set()
    groups = {g: list(v) for g, v in store.groups.items() if v}
    sector_ids = store.sector_ids if sector_ids is None else sector_ids
    common = dict(dates=store.dates, symbols=store.symbols, store=store,
                  sector_ids=np.asarray(sector_ids, dtype=np.int64))  # fmt: skip
    if feature_set == "own":
        return StockMajorInputs(
            feature_set="own", values=store.values, valid=np.array(store.mask),
            names=list(store.names), groups=groups, by_stock=store.values_by_stock, **common,
        )  # fmt: skip
    if relationships is None:
        raise ValueError("feature_set='hybrid' needs relationship features")
    rel, rel_names = _relationship_arrays(relationships, features)
    cache = store.__dict__.setdefault("_stage3_inputs", {})
    key = (id(rel), tuple(rel_names), tuple(common["sector_ids"]))
    if key in cache and cache[key][0] is rel:
        return cache[key][1]
    N, T, F = store.values_by_stock.shape
    K = rel.shape[2]
    by_stock = store.scratch("stage3_hybrid", (N, T, F + K))
    valid = np.array(store.mask)
    for a in range(0, T, block_dates):
        b = min(T, a + block_dates)
        by_stock[:, a:b, :F] = np.asarray(store.values[a:b]).transpose(1, 0, 2)  # (N, t, F)
        by_stock[:, a:b, F:] = rel[a:b].transpose(1, 0, 2)  # (N, t, K)
        valid[a:b] &= np.isfinite(rel[a:b]).all(axis=-1)
        store.release()
    inputs = StockMajorInputs(
        feature_set="hybrid", values=by_stock.transpose(1, 0, 2), valid=valid,
        names=list(store.names) + rel_names, groups={**groups, "relationship": rel_names},
        by_stock=by_stock, **common,
    )  # fmt: skip
    cache.clear()  # one hybrid file per store at a time
    cache[key] = (rel, inputs)
    return inputs
