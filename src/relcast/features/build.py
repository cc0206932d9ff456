"""Features, labels and splits: from a :class:`~relcast.data.panel.Panel` to model inputs.

:func:`build_features` assembles the :class:`FeatureSet` read by every stage:

1. ``"own"``: ~30 technical indicators of each symbol (:mod:`.indicators`), normalised
   cross-sectionally within each date (:mod:`.normalize`).
2. ``"index"``: a few indicators of each market index, the same for every stock at a date,
   z-scored with statistics of the training span only.
3. ``"calendar"``: day of week, month end, ... with fixed scaling (:mod:`.calendar`).
4. ``"regime"`` (optional): one-hot bull / bear / sideways of the market index at each date
   (:func:`relcast.features.regime_detection.detect_regime`, past data only).
5. ``"alpha158"`` (optional): qlib's Alpha158 set (:mod:`.alpha158`), normalised like ``"own"``.

Labels are :func:`relcast.features.labels.forward_returns`, chronological splits
:func:`relcast.features.splits.chronological_split`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from relcast.data.panel import Panel, RelcastDataError, format_names
from relcast.features.alpha158 import alpha158_features, panel_vwap
from relcast.features.calendar import calendar_features
from relcast.features.featureset import FeatureSet
from relcast.features.indicators import compute_indicators, ffill, index_indicators
from relcast.features.normalize import (
    TrainSpanScaler,
    cross_sectional_robust_zscore,
    resolve_train_end,
)

__all__ = [
    "DEFAULT_WINDOWS",
    "EQUAL_WEIGHT_INDEX",
    "build_features",
    "index_features",
    "price_field",
    "index_regime_features",
    "traded_quantity",
]

DEFAULT_WINDOWS = (5, 10, 20, 60)
EQUAL_WEIGHT_INDEX = "EW"


def build_features(
    panel: Panel,
    train_end: int | str | np.datetime64 | None = None,
    *,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    include_index: bool = True,
    include_calendar: bool = True,
    regime_window: int | None = None,
    alpha158: bool = False,
    scalers: dict[str, tuple[list[str], TrainSpanScaler]] | None = None,
) -> FeatureSet:
    """Compute the normalised feature tensor of a panel.

    Args:
        panel: OHLCV bars; ``close`` is required, missing ``open/high/low`` fall back to
            ``close`` and a missing ``volume`` to 0. An ``amount`` field, if present, feeds
            ``amount_ratio20`` instead of the ``dollar_volume20`` turnover proxy.
        train_end: last date of the training span (an index into ``panel.dates`` or a date).
            Only the index features fit statistics, on dates ``<= train_end``. ``None``
            uses the first 60% of the dates; pass your split's real training end.
        windows: bar counts for returns, moving-average ratios, volatility and volume ratios.
        include_index: add the ``"index"`` group. Each symbol with ``is_index=True`` gives
            columns ``idx_<SYMBOL>_<name>``; a panel without indices gets an equal-weight
            index of all its stocks (mean of their valid 1-bar simple returns per date,
            compounded) as ``idx_EW_<name>``.
        include_calendar: add the ``"calendar"`` group.
        regime_window: add the ``"regime"`` group, columns ``regime_bull``,
            ``regime_bear``, ``regime_sideways`` (one-hot, the same for every stock at a
            date): the regime of the first index symbol (or of the equal-weight index),
            from :func:`~relcast.features.regime_detection.detect_regime` over this many
            trailing bars.
            ``None`` (default) adds no regime group.
        alpha158: add the ``"alpha158"`` group (:func:`~relcast.features.alpha158.
            alpha158_features`: KBAR, PRICE and 29 rolling operators over 5/10/20/30/60 bars;
            ``VWAP0`` only with a ``vwap`` or ``amount`` field), normalised cross-sectionally
            like ``"own"``; a value that is undefined after its warm-up (a flat window, a
            zero-volume bar) is set to the date's median (0), as qlib's ``Fillna`` does.
        scalers: fitted training-span statistics by group, ``{"index": (names, scaler)}``
            (:func:`~relcast.features.normalize.scalers_from_dict`). A group found here is
            scaled with them (``train_end`` is then not needed, so the panel may start
            after the training span); a group missing is fitted on dates ``<= train_end``
            and added to the dict, so a caller can save what was fitted.

    Returns:
        A :class:`FeatureSet` whose mask is True where the symbol traded at t and every
        feature is defined (each indicator's warm-up since listing is over). Index symbols
        are rows like any stock; their ``"own"`` features are their own indicators.

    Every feature at date t uses data up to t only (see ``tests/test_lookahead.py``).
    """
    if "close" not in panel.fields:
        raise RelcastDataError(f"panel has no 'close' field (fields: {list(panel.fields)})")
    windows = tuple(sorted({int(w) for w in windows}))
    if not windows or windows[0] < 2:
        raise ValueError(f"windows must be integers >= 2, got {windows}")
    mask = panel.mask  # (T, N)
    T, N = mask.shape
    scalers = {} if scalers is None else scalers

    # Prices carry over suspensions (forward fill, never back-fill): indicators stay
    # continuous, and the mask below decides where a value may be used.
    close = ffill(np.where(mask, panel.field("close"), np.nan))  # (T, N)
    ohl = [price_field(panel, name, close) for name in ("open", "high", "low")]
    listed = np.logical_or.accumulate(mask, axis=0)  # (T, N) True from the first trade on
    volume = traded_quantity(panel, "volume", mask, listed)
    amount = traded_quantity(panel, "amount", mask, listed) if "amount" in panel.fields else None

    raw, warmup = compute_indicators(*ohl, close, volume, windows=windows, amount=amount)
    bars_seen = np.cumsum(mask, axis=0)  # (T, N) traded bars up to and including t
    reference = ~panel.is_index if (~panel.is_index).any() else None
    groups = {"own": list(raw)}
    if alpha158:  # per-stock like "own", normalised in the same loop below
        raw_a, warmup_a = alpha158_features(*ohl, close, volume, vwap=panel_vwap(panel))
        groups["alpha158"] = list(raw_a)
        raw.update(raw_a)
        warmup.update(warmup_a)
    tables = {}  # per-date groups, (T, F_g), broadcast to every stock below
    if include_index or regime_window is not None:  # one index level for both groups
        indices = _index_levels(panel, close, mask, bars_seen)
    if include_index:
        groups["index"], tables["index"] = index_features(
            *indices, lambda: resolve_train_end(panel.dates, train_end), scalers
        )
    if include_calendar:
        groups["calendar"], tables["calendar"] = calendar_features(panel.dates)
    if regime_window is not None:
        groups["regime"], tables["regime"] = index_regime_features(*indices, regime_window)

    names = [n for g in groups.values() for n in g]
    per_stock = [n for g in ("own", "alpha158") for n in groups.get(g, [])]
    filled = set(groups.get("alpha158", []))
    own = np.empty((len(per_stock), T, N), dtype=np.float32)  # (F_own + F_alpha158, T, N)
    for k, name in enumerate(per_stock):  # a loop over features, each on all of [T, N]
        warmed = mask & (bars_seen > warmup[name])
        own[k] = cross_sectional_robust_zscore(raw.pop(name), warmed, reference)
        if name in filled:
            own[k][warmed & np.isnan(own[k])] = 0.0
    values = np.empty((T, N, len(names)), dtype=np.float32)  # (T, N, F)
    k = len(per_stock)
    values[:, :, :k] = own.transpose(1, 2, 0)  # one transposing copy beats F strided ones
    del own
    for table in tables.values():
        values[:, :, k : k + table.shape[1]] = table[:, None, :]
        k += table.shape[1]
    valid = mask & np.isfinite(values.sum(axis=2))  # a NaN anywhere makes the sum NaN
    values[~valid] = np.nan
    return FeatureSet(
        dates=panel.dates,
        symbols=panel.symbols,
        names=names,
        values=values,
        mask=valid,
        groups=groups,
    )


def price_field(panel: Panel, name: str, close: np.ndarray) -> np.ndarray:
    """A forward-filled price field, or ``close`` where the field (or a value) is missing."""
    if name not in panel.fields:
        return close
    value = ffill(np.where(panel.mask, panel.field(name), np.nan))
    return np.where(np.isnan(value), close, value)


def traded_quantity(panel: Panel, name: str, mask: np.ndarray, listed: np.ndarray) -> np.ndarray:
    """Volume-like field: 0 on suspended days and where missing, NaN before listing."""
    if name in panel.fields:
        value = np.where(mask, np.nan_to_num(panel.field(name), nan=0.0), 0.0)
    else:
        value = np.zeros(mask.shape)
    return np.where(listed, value, np.nan)


def _index_levels(
    panel: Panel, close: np.ndarray, mask: np.ndarray, bars_seen: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, level [T, K], traded [T, K], bars seen [T, K])`` of the market indices.

    The panel's ``is_index`` symbols, or else an equal-weight index of all its stocks.
    """
    which = np.flatnonzero(panel.is_index)
    if len(which):
        return list(panel.symbols[which]), close[:, which], mask[:, which], bars_seen[:, which]
    # equal-weight index: mean valid 1-bar simple return of all stocks, compounded
    prev = np.vstack([np.full((1, close.shape[1]), np.nan), close[:-1]])
    with np.errstate(invalid="ignore", divide="ignore"):
        ret = np.where(mask, close / prev - 1.0, np.nan)  # (T, N)
    ok = np.isfinite(ret)
    mean = np.where(ok, ret, 0.0).sum(axis=1) / np.maximum(ok.sum(axis=1), 1)  # (T,)
    level = np.cumprod(1.0 + mean)[:, None]  # (T, 1)
    traded = np.ones_like(level, dtype=bool)
    seen = np.arange(1, len(level) + 1)[:, None]
    return [EQUAL_WEIGHT_INDEX], level, traded, seen


def index_regime_features(
    labels: list[str], level: np.ndarray, traded: np.ndarray, seen: np.ndarray, window: int
) -> tuple[list[str], np.ndarray]:
    """One-hot regime ``[T, 3]`` of the first market index (past data only)."""
    from relcast.features.regime_detection import REGIME_NAMES, detect_regime, regime_features

    # a date the index did not trade keeps its last close (detect_regime carries it forward)
    regime = detect_regime(np.where(traded[:, 0], level[:, 0], np.nan), window=window)
    return [f"regime_{name}" for name in REGIME_NAMES], regime_features(regime)


def index_features(
    labels: list[str],
    level: np.ndarray,
    traded: np.ndarray,
    seen: np.ndarray,
    train_last: Callable[[], int],
    scalers: dict[str, tuple[list[str], TrainSpanScaler]],
) -> tuple[list[str], np.ndarray]:
    """Index indicators as ``[T, F_idx]`` (from :func:`_index_levels`), z-scored with
    ``scalers["index"]``, or else with statistics of dates ``<= train_last()`` (added to
    ``scalers``)."""
    raw, warmup = index_indicators(level)
    names, cols = [], []
    for k, label in enumerate(labels):
        for name, value in raw.items():
            ok = traded[:, k] & (seen[:, k] > warmup[name])
            # an index that did not trade at t contributes its last known value
            cols.append(ffill(np.where(ok, value[:, k], np.nan)))
            names.append(f"idx_{label}_{name}")
    table = np.stack(cols, axis=1)  # (T, F_idx)
    if "index" not in scalers:
        scalers["index"] = (names, TrainSpanScaler().fit(table, slice(0, train_last() + 1)))
    fitted, scaler = scalers["index"]
    if list(fitted) != names:
        raise RelcastDataError(
            f"the market indices differ from the training ones: features {format_names(names)} "
            f"vs {format_names(fitted)} at training; pass data with the same index symbols"
        )
    return names, scaler.transform(table).astype(np.float32)
