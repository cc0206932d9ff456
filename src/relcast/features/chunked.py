""":func:`~relcast.features.build.build_features` in blocks, with the same values, for panels whose
``[T, N, F]`` feature array does not fit in memory (``data.store: memmap``).

The features split cleanly along two axes:

- the **raw indicators** of a stock (``own``, ``alpha158``) read that stock's own history only
  (forward fill, rolling windows, EMAs, warm-up counts all run along time, column by column),
  so they are computed **by symbol block** over all dates;
- their **normalisation** is cross-sectional, within each date, so it runs **by date block**
  over all symbols (the warm-up mask needs each stock's traded-bar count, carried across
  blocks);
- the **index / calendar / regime** columns are a few numbers per date, computed once over all
  dates (the equal-weight index, when the panel has none, by date blocks with the last close
  carried).

:class:`ChunkedFeatures` does pass 1 into a writable stock-major scratch array ``[N, T, F]``
(the feature store's own file: raw values are overwritten by the normalised ones in pass 2)
and yields pass 2 as ``(start, values [t, N, F], mask [t, N])`` blocks. Every step is the
same float operation, in the same order per cell, as the in-memory builder, so the values are
equal (``tests/test_memmap_run.py`` checks bit equality).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from relcast.data.panel import Panel, memory_map_of, release_pages
from relcast.features.alpha158 import alpha158_features, panel_vwap
from relcast.features.build import (
    DEFAULT_WINDOWS,
    EQUAL_WEIGHT_INDEX,
    index_features,
    index_regime_features,
    price_field,
    traded_quantity,
)
from relcast.features.calendar import calendar_features
from relcast.features.indicators import compute_indicators, ffill
from relcast.features.normalize import cross_sectional_robust_zscore, resolve_train_end

BLOCK_BYTES = 2**28  # ~256 MB of float64 temporaries per block (pass 1 and pass 2)


def symbol_columns(panel: Panel, n0: int, n1: int, block_dates: int = 8192) -> Panel:
    """The panel of symbols ``n0 .. n1 - 1`` over every date. A memory-mapped panel's columns
    are copied a block of dates at a time, its pages released after each block (a column
    touches every page of a time-major file: read at once, the whole file would stay in RSS)."""
    values = panel.values[:, n0:n1]
    if memory_map_of(panel.values) is not None:
        values = np.empty(values.shape, dtype=np.float32)
        for a in range(0, panel.num_dates, block_dates):
            values[a : a + block_dates] = panel.values[a : a + block_dates, n0:n1]
            release_pages(panel.values)
    return Panel(
        dates=panel.dates,
        symbols=panel.symbols[n0:n1],
        fields=panel.fields,
        values=values,
        mask=panel.mask[:, n0:n1],
        meta=panel.meta.iloc[n0:n1].reset_index(drop=True),
    )


def _raw_indicators(panel: Panel, windows, alpha158: bool) -> tuple[dict, dict, dict]:
    """``build_features``' raw per-stock indicators of ``panel`` (``float32 [T, n]`` each):
    ``(raw, warmup, groups)`` with groups ``own`` (and ``alpha158``)."""
    mask = panel.mask
    close = ffill(np.where(mask, panel.field("close"), np.nan))
    ohl = [price_field(panel, name, close) for name in ("open", "high", "low")]
    listed = np.logical_or.accumulate(mask, axis=0)
    volume = traded_quantity(panel, "volume", mask, listed)
    amount = traded_quantity(panel, "amount", mask, listed) if "amount" in panel.fields else None
    raw, warmup = compute_indicators(*ohl, close, volume, windows=windows, amount=amount)
    groups = {"own": list(raw)}
    if alpha158:
        raw_a, warmup_a = alpha158_features(*ohl, close, volume, vwap=panel_vwap(panel))
        groups["alpha158"] = list(raw_a)
        raw.update(raw_a)
        warmup.update(warmup_a)
    return raw, warmup, groups


class ChunkedFeatures:
    """The features of ``panel`` (as ``build_features`` with these arguments) in blocks.

    Attributes:
        names, groups: the feature columns, as in the FeatureSet ``build_features`` returns.
        per_stock: the ``own`` (+ ``alpha158``) names, the first columns.
        scalers: the training-span statistics used (fitted into the dict given, if missing).
    """

    def __init__(
        self,
        panel: Panel,
        train_end=None,
        *,
        windows: Sequence[int] = DEFAULT_WINDOWS,
        regime_window: int | None = None,
        alpha158: bool = False,
        scalers: dict | None = None,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        self.panel = panel
        self.windows = tuple(sorted({int(w) for w in windows}))
        self.alpha158 = alpha158
        self.scalers = {} if scalers is None else scalers
        self.block_bytes = int(block_bytes)
        T, N = panel.mask.shape
        # the column names (and warm-ups) do not depend on the values: one symbol, few dates
        probe = symbol_columns(panel, 0, 1)
        _, self.warmup, groups = _raw_indicators(probe, self.windows, alpha158)
        self.per_stock = groups["own"] + groups.get("alpha158", [])
        self.filled = set(groups.get("alpha158", []))
        tables = self._context(regime_window, train_end)
        for g, (names, _) in tables.items():
            groups[g] = names
        self.tables = [table for _, table in tables.values()]  # (T, F_g) each
        self.groups = groups
        self.names = [n for g in groups.values() for n in g]
        pi = panel.is_index
        self.reference = ~pi if (~pi).any() else None

    # ------------------------------------------------------------------ per-date columns
    def _index_levels(self):
        """``build_features._index_levels`` without the ``[T, N]`` price arrays."""
        p = self.panel
        which = np.flatnonzero(p.is_index)
        if len(which):
            mask = p.mask[:, which]
            close = ffill(np.where(mask, p.field("close")[:, which], np.nan))
            return list(p.symbols[which]), close, mask, np.cumsum(mask, axis=0)
        T, N = p.mask.shape
        mean = np.empty(T)
        last = np.full((1, N), np.nan, dtype=np.float32)  # the previous block's last close
        for a, b in self._date_blocks(8):
            mask = p.mask[a:b]
            block = np.where(mask, p.field("close")[a:b], np.nan)
            close = ffill(np.vstack([last, block]))  # (1 + t, N)
            with np.errstate(invalid="ignore", divide="ignore"):
                # float64 like build_features' prev (a float64 array of float32 closes)
                ret = np.where(mask, close[1:] / close[:-1].astype(np.float64) - 1.0, np.nan)
            ok = np.isfinite(ret)
            mean[a:b] = np.where(ok, ret, 0.0).sum(axis=1) / np.maximum(ok.sum(axis=1), 1)
            last = close[-1:]
        level = np.cumprod(1.0 + mean)[:, None]
        seen = np.arange(1, T + 1)[:, None]
        return [EQUAL_WEIGHT_INDEX], level, np.ones_like(level, dtype=bool), seen

    def _context(self, regime_window, train_end) -> dict:
        p = self.panel
        indices = self._index_levels()
        out = {}
        out["index"] = index_features(
            *indices, lambda: resolve_train_end(p.dates, train_end), self.scalers
        )
        out["calendar"] = calendar_features(p.dates)
        if regime_window is not None:
            out["regime"] = index_regime_features(*indices, regime_window)
        return out

    # ------------------------------------------------------------------ blocks
    def _date_blocks(self, columns: int) -> Iterator[tuple[int, int]]:
        T, N = self.panel.mask.shape
        step = max(1, self.block_bytes // (8 * max(1, N) * max(1, columns)))
        for a in range(0, T, step):
            yield a, min(T, a + step)

    def write_raw(self, scratch: np.ndarray, release=None) -> None:
        """Pass 1: the raw per-stock indicators into ``scratch[:, :, :k]`` (``[N, T, F]``),
        one block of symbols at a time; ``release()`` after each block (memory maps)."""
        T, N = self.panel.mask.shape
        k = len(self.per_stock)
        width = max(1, self.block_bytes // (T * 8 * (k + 20)))  # raw float32 + temporaries
        for n0 in range(0, N, width):
            n1 = min(N, n0 + width)
            raw, _, _ = _raw_indicators(
                symbol_columns(self.panel, n0, n1), self.windows, self.alpha158
            )
            block = np.stack([raw.pop(name) for name in self.per_stock], axis=-1)  # (T, n, k)
            scratch[n0:n1, :, :k] = block.transpose(1, 0, 2)  # one copy, k floats at a time
            del block
            if release is not None:
                release()

    def blocks(self, scratch: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Pass 2: ``(start, values float32 [t, N, F], mask bool [t, N])`` by date block,
        normalised within each date from the raw columns of ``scratch`` (pass 1)."""
        T, N = self.panel.mask.shape
        k, F = len(self.per_stock), len(self.names)
        seen = np.zeros(N, dtype=np.int64)  # traded bars before the block
        for a, b in self._date_blocks(2 * F):
            mask = self.panel.mask[a:b]
            bars_seen = seen + np.cumsum(mask, axis=0)  # (t, N)
            seen = bars_seen[-1]
            raw = np.array(scratch[:, a:b, :k])  # (N, t, k)
            values = np.empty((b - a, N, F), dtype=np.float32)  # (t, N, F)
            for j, name in enumerate(self.per_stock):
                warmed = mask & (bars_seen > self.warmup[name])
                z = cross_sectional_robust_zscore(raw[:, :, j].T, warmed, self.reference)
                if name in self.filled:
                    z[warmed & np.isnan(z)] = 0.0
                values[:, :, j] = z
            del raw
            c = k
            for table in self.tables:
                values[:, :, c : c + table.shape[1]] = table[a:b, None, :]
                c += table.shape[1]
            valid = mask & np.isfinite(values.sum(axis=2))
            values[~valid] = np.nan
            yield a, values, valid
