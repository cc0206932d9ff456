"""Factor baselines: one-line signals of a stock's own bars, scored as models in every run.

A quant asks of any forecast first whether it beats the textbook factors, and second what
it adds beyond them (:mod:`relcast.evaluation.neutral`). Each factor is a score ``[T, N]``
read from bars up to and including ``t`` (no look-ahead, ``tests/test_factors.py``), with
prices carried forward over days a stock did not trade (never back-filled), like the
features. The sign is chosen so that a higher score is the textbook's better stock:

| name | score at ``t`` (``c``: close carried forward, ``r``: a traded day's return) |
|---|---|
| ``reversal_1d`` | ``-(c[t] / c[t-1] - 1)``: yesterday's losers bounce |
| ``reversal_5d`` | ``-(c[t] / c[t-5] - 1)`` |
| ``momentum_20d`` | ``c[t] / c[t-20] - 1`` (relcast's former ``naive_momentum``) |
| ``low_volatility_20d`` | ``-std(r[t-19..t])``, from at least 10 traded days |
| ``liquidity_20d`` | ``-log(mean(close * volume)[t-19..t])``, a day without a trade 0 |

The windows are settings (``baselines.<name>.window``); a row keeps its name when its
window changes. NaN where the history is too short (before ``w`` dates, or before listing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from relcast.features.indicators import ffill

BLOCK_CELLS = 2**22  # (date, stock) cells read at a time where a whole [T, N] is not needed


@dataclass(frozen=True)
class Factor:
    """One factor baseline: its kind (the formula) and window (bars it looks back)."""

    kind: str
    window: int


FACTORS: dict[str, Factor] = {
    "reversal_1d": Factor("reversal", 1),
    "reversal_5d": Factor("reversal", 5),
    "momentum_20d": Factor("momentum", 20),
    "low_volatility_20d": Factor("low_volatility", 20),
    "liquidity_20d": Factor("liquidity", 20),
}


def enabled_factors(settings: Any = None) -> dict[str, Factor]:
    """The factors a run scores, in :data:`FACTORS`' order: ``settings.<name>`` (the config's
    ``baselines:`` section) gives each one's ``enabled`` and ``window``; a name the settings
    lack, or a window of None, keeps its default (on, the window in its name)."""
    out = {}
    for name, default in FACTORS.items():
        own = getattr(settings, name, None)
        if own is None:
            out[name] = default
        elif own.enabled:
            out[name] = Factor(default.kind, int(own.window or default.window))
    return out


def factor_scores(panel, factor: Factor, dates: slice | None = None) -> np.ndarray:
    """``factor``'s score ``[T, N]`` on ``panel`` (its ``close``, ``volume`` and ``mask``), or
    ``[W, N]`` on the dates ``dates`` only (the same values, read from ``window`` earlier
    dates and the last price before them). KeyError when the panel lacks a field it needs."""
    close, mask, w = panel.field("close"), panel.mask, factor.window
    if factor.kind == "momentum":
        return momentum(close, mask, w, dates)
    if factor.kind == "reversal":
        return -momentum(close, mask, w, dates)
    if factor.kind == "low_volatility":
        return -volatility(close, mask, w, dates)
    if factor.kind == "liquidity":
        return liquidity(close, panel.field("volume"), mask, w, dates)
    raise ValueError(f"unknown factor kind {factor.kind!r}; kinds: reversal, momentum, "
                     "low_volatility, liquidity")  # fmt: skip


def momentum(
    close: np.ndarray, mask: np.ndarray, window: int = 20, dates: slice | None = None
) -> np.ndarray:
    """Past ``window``-bar return ``close[t] / close[t - window] - 1`` ``[T, N]`` (prices
    carried forward over masked cells; NaN for the first ``window`` dates); ``dates``: only
    those dates ``[W, N]`` (the same values, from ``window`` earlier dates and the last
    price before them, found block by block)."""
    T = close.shape[0]
    lo, hi, _ = (dates or slice(0, T)).indices(T)
    first = max(0, lo - window)
    filled = carried_prices(close, mask, first, hi)  # (hi - first, N): dates first..hi-1
    past = np.full((hi - lo, close.shape[1]), np.nan, dtype=filled.dtype)
    a = max(lo, window)  # the first date with a price ``window`` dates earlier
    if a < hi:
        past[a - lo :] = (
            filled[a - first :] / filled[a - window - first : hi - window - first] - 1.0
        )
    return past


def volatility(
    close: np.ndarray, mask: np.ndarray, window: int = 20, dates: slice | None = None
) -> np.ndarray:
    """Standard deviation (ddof 1) of the 1-bar returns of the traded days among the last
    ``window`` dates ``[T, N]`` (``[W, N]`` on ``dates``); NaN with fewer than
    ``max(2, ceil(window / 2))`` of them. A return is ``c[s] / c[s-1] - 1`` on a date ``s``
    the stock traded, ``c`` carried forward (a suspension's move lands on its first day back)."""
    T = close.shape[0]
    lo, hi, _ = (dates or slice(0, T)).indices(T)
    first = max(0, lo - window)
    filled = carried_prices(close, mask, first, hi)  # (hi - first, N): dates first..hi-1
    ret = np.full(filled.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(filled[1:], filled[:-1], out=ret[1:])  # the returns of dates first+1..
    del filled
    ret -= 1.0
    ret[~np.asarray(mask[first:hi], dtype=bool)] = np.nan
    keep = slice(lo - first, None)  # the rows of the dates asked for
    count = rolling_sum(np.isfinite(ret), window)[keep]  # over the ``window`` dates up to t
    np.nan_to_num(ret, copy=False)
    total = rolling_sum(ret, window)[keep]
    np.square(ret, out=ret)
    square = rolling_sum(ret, window)[keep]
    del ret
    with np.errstate(invalid="ignore", divide="ignore"):
        square -= total * total / count
        square /= count - 1
    np.sqrt(np.maximum(square, 0.0, out=square), out=square)
    square[count < max(2, -(-window // 2))] = np.nan
    return square.astype(np.result_type(close.dtype, np.float32), copy=False)


def liquidity(
    close: np.ndarray, volume: np.ndarray, mask: np.ndarray, window: int = 20,
    dates: slice | None = None,
) -> np.ndarray:  # fmt: skip
    """Minus the log of the mean dollar volume ``close * volume`` over the last ``window``
    dates ``[T, N]`` (``[W, N]`` on ``dates``): a day the stock did not trade counts 0, a
    window reaching before its first trade (or a mean of 0) gives NaN. High = illiquid."""
    T = close.shape[0]
    lo, hi, _ = (dates or slice(0, T)).indices(T)
    first = max(0, lo - window + 1)
    listed = np.isfinite(carried_prices(close, mask, first, hi))  # (hi - first, N)
    dollars = np.nan_to_num(np.asarray(close[first:hi], dtype=np.float64))
    dollars *= np.nan_to_num(np.asarray(volume[first:hi], dtype=np.float64))
    dollars[~np.asarray(mask[first:hi], dtype=bool)] = 0.0  # no trade: no dollar volume
    keep = slice(lo - first, None)
    full = rolling_sum(listed, window)[keep] == window  # listed on every date of the window
    del listed
    total = rolling_sum(dollars, window)[keep]
    del dollars
    with np.errstate(invalid="ignore", divide="ignore"):
        score = -np.log(total / window)
    score[~full | ~(total > 0)] = np.nan
    return score.astype(np.result_type(close.dtype, np.float32), copy=False)


def rolling_sum(x: np.ndarray, window: int) -> np.ndarray:
    """``float64 [S, N]``: the sum of ``x [S, N]`` over the ``window`` rows up to and including
    each (fewer at the start), from one cumulative sum (no loop over dates)."""
    S = x.shape[0]
    c = np.zeros((S + 1, *x.shape[1:]))
    np.cumsum(x, axis=0, out=c[1:])
    if S > window:  # rows from ``window`` on: minus the sum before their window
        c[window + 1 :] -= c[1 : S + 1 - window].copy()
    return c[1:]


def carried_prices(close: np.ndarray, mask: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``close`` of the dates ``lo..hi-1`` with masked cells carried forward from the last
    price before them (of any earlier date): ``ffill(where(mask, close, nan))[lo:hi]``,
    reading ``[T, N]`` ``BLOCK_CELLS`` at a time."""
    step = max(1, BLOCK_CELLS // max(1, close.shape[1]))
    last = None  # (N,) the last price before the block (NaN: none yet)
    for a in range(0, lo, step):  # dates before the window: only their last price is kept
        b = min(a + step, lo)
        block = ffill(np.where(mask[a:b], close[a:b], np.nan))
        last = block[-1] if last is None else np.where(np.isnan(block[-1]), last, block[-1])
    block = np.where(mask[lo:hi], close[lo:hi], np.nan)
    if last is not None and len(block):
        block = np.concatenate([last[None], block])  # carried in, then dropped
        return ffill(block)[1:]
    return ffill(block)
