"""Technical indicators computed for every stock at once on ``[T, N]`` arrays.

Conventions shared by every function here:

- Inputs are ``[T, N]`` float arrays, time on axis 0. NaN means "no data yet" (before
  listing). Callers forward-fill suspensions first (:func:`ffill`), so a suspended stock
  carries its last price and indicators stay continuous across the gap.
- Recursive filters (EMA, Wilder smoothing) run through ``scipy.signal.lfilter`` along
  axis 0; rolling windows use cumulative sums or ``scipy.ndimage`` filters. No loop over
  dates or stocks.
- An output at ``t`` depends on inputs at ``<= t`` only. Leading NaN (before a stock's first
  value) stay NaN in the output; they are never back-filled into later values.
- EMAs are seeded with the first value (pandas ``adjust=False``); TA-Lib seeds with an SMA,
  so both agree only after a burn-in of a few periods. :func:`compute_indicators` reports a
  warm-up per feature, after which the seed no longer matters much.

:func:`compute_indicators` turns OHLCV into the ~30 "own" features (see its docstring for
the list and their scaling); :func:`index_indicators` gives the handful of market-index
features broadcast to every stock.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import maximum_filter1d, minimum_filter1d
from scipy.signal import lfilter

# --------------------------------------------------------------------------- helpers


def ffill(x: np.ndarray) -> np.ndarray:
    """Forward-fill NaN along time (axis 0); leading NaN stay NaN (nothing is back-filled)."""
    x = np.asarray(x)
    T = x.shape[0]
    idx = np.where(np.isnan(x), 0, np.arange(T).reshape((T,) + (1,) * (x.ndim - 1)))
    np.maximum.accumulate(idx, axis=0, out=idx)
    return np.take_along_axis(x, idx, axis=0)


def fill_leading(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace each column's leading NaN by its first value, for filters that hate NaN.

    Returns the filled array and the boolean ``[T, N]`` mask of leading positions, which the
    caller resets to NaN afterwards: the fill only keeps the filter state finite, it never
    reaches an output that is kept.
    """
    x = np.asarray(x, dtype=np.float64)
    finite = ~np.isnan(x)
    lead = ~np.logical_or.accumulate(finite, axis=0)  # (T, N) True before the first value
    first = np.argmax(finite, axis=0)  # (N,) index of the first value (0 if none)
    first_value = np.take_along_axis(x, first[None], axis=0)  # (1, N)
    first_value = np.where(np.isnan(first_value), 0.0, first_value)
    return np.where(lead, first_value, x), lead


def lag_rows(x: np.ndarray, k: int) -> np.ndarray:
    """``x[t - k]`` at row ``t`` (NaN for the first ``k`` rows)."""
    out = np.full_like(x, np.nan, dtype=np.float64)
    if k < x.shape[0]:
        out[k:] = x[: x.shape[0] - k]
    return out


def _safe_div(num: np.ndarray, den: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """``num / den`` with ``fill`` where the denominator is zero (NaN stays NaN)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(den == 0, fill, out)


# --------------------------------------------------------------------------- moving averages


def exp_smooth(x: np.ndarray, alpha: float) -> np.ndarray:
    """``y[t] = alpha * x[t] + (1 - alpha) * y[t-1]``, seeded with each column's first value."""
    xf, lead = fill_leading(x)
    x0 = xf[:1]  # (1, N): subtracting the seed makes the zero initial state exact
    y = lfilter([alpha], [1.0, alpha - 1.0], xf - x0, axis=0) + x0
    y[lead] = np.nan
    return y


def ema(x: np.ndarray, period: int) -> np.ndarray:
    """Exponential moving average with ``alpha = 2 / (period + 1)`` (TA-Lib ``EMA``)."""
    return exp_smooth(x, 2.0 / (period + 1.0))


def wilder(x: np.ndarray, period: int) -> np.ndarray:
    """Wilder's smoothing, ``alpha = 1 / period`` (the average in RSI and ATR)."""
    return exp_smooth(x, 1.0 / period)


def rolling_sum(x: np.ndarray, window: int) -> np.ndarray:
    """Sum over ``[t - window + 1, t]``; NaN unless all ``window`` values exist."""
    x = np.asarray(x, dtype=np.float64)
    finite = ~np.isnan(x)
    cs = np.cumsum(np.where(finite, x, 0.0), axis=0)
    out = np.empty_like(cs)
    out[:window] = cs[:window]
    np.subtract(cs[window:], cs[:-window], out=out[window:])
    cn = np.cumsum(finite, axis=0, dtype=np.int32)
    count = cn.copy()
    count[window:] -= cn[:-window]
    out[count < window] = np.nan
    return out


def sma(x: np.ndarray, window: int) -> np.ndarray:
    """Simple moving average over the last ``window`` rows (TA-Lib ``SMA``)."""
    return rolling_sum(x, window) / window


def rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    """Population standard deviation (ddof=0, as TA-Lib ``STDDEV``) over the last ``window``."""
    x = np.asarray(x, dtype=np.float64)
    # centre on each column's first value so E[x^2] - E[x]^2 does not cancel catastrophically
    xf, lead = fill_leading(x)
    xc = np.where(lead, np.nan, xf - xf[:1])
    mean = sma(xc, window)
    var = sma(xc * xc, window) - mean * mean
    return np.sqrt(np.maximum(var, 0.0))


def rolling_max(x: np.ndarray, window: int) -> np.ndarray:
    """Maximum over ``[t - window + 1, t]`` (TA-Lib ``MAX``); NaN during the first window."""
    xf, lead = fill_leading(x)
    out = maximum_filter1d(xf, size=window, axis=0, origin=(window - 1) // 2, mode="nearest")
    return _mask_warmup(out, lead, window - 1)


def rolling_min(x: np.ndarray, window: int) -> np.ndarray:
    """Minimum over ``[t - window + 1, t]`` (TA-Lib ``MIN``); NaN during the first window."""
    xf, lead = fill_leading(x)
    out = minimum_filter1d(xf, size=window, axis=0, origin=(window - 1) // 2, mode="nearest")
    return _mask_warmup(out, lead, window - 1)


def _mask_warmup(out: np.ndarray, lead: np.ndarray, bars: int) -> np.ndarray:
    """NaN where fewer than ``bars`` rows precede t since the column's first value."""
    since = np.cumsum(~lead, axis=0) - 1  # rows since the first value (-1 before it)
    out = np.asarray(out, dtype=np.float64).copy()
    out[since < bars] = np.nan
    return out


# --------------------------------------------------------------------------- indicators


def simple_return(close: np.ndarray, k: int) -> np.ndarray:
    """``close[t] / close[t-k] - 1`` (TA-Lib ``ROC`` / 100)."""
    return np.asarray(close, dtype=np.float64) / lag_rows(close, k) - 1.0


def log_return(close: np.ndarray, k: int) -> np.ndarray:
    """``log(close[t] / close[t-k])``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(close, dtype=np.float64) / lag_rows(close, k))


def rsi(close: np.ndarray, period: int = 14) -> np.ndarray:
    """Relative strength index in ``[0, 100]`` (Wilder); 50 when price did not move at all."""
    delta = np.asarray(close, dtype=np.float64) - lag_rows(close, 1)
    gain = wilder(np.maximum(delta, 0.0), period)
    loss = wilder(np.maximum(-delta, 0.0), period)
    return 100.0 * _safe_div(gain, gain + loss, fill=0.5)


def macd(
    close: np.ndarray, fast: int = 12, slow: int = 26, signal: int = 9
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MACD line ``EMA_fast - EMA_slow``, its ``EMA_signal`` and the histogram (TA-Lib ``MACD``)."""
    line = ema(close, fast) - ema(close, slow)
    sig = ema(line, signal)
    return line, sig, line - sig


def bollinger(
    close: np.ndarray, window: int = 20, num_std: float = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper, middle and lower Bollinger bands (TA-Lib ``BBANDS`` with an SMA, ddof=0)."""
    mid = sma(close, window)
    sd = rolling_std(close, window)
    return mid + num_std * sd, mid, mid - num_std * sd


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """``max(high - low, |high - prev close|, |low - prev close|)``; ``high - low`` on bar 1."""
    prev = lag_rows(close, 1)
    hl = np.asarray(high, dtype=np.float64) - low
    tr = np.fmax(hl, np.fmax(np.abs(high - prev), np.abs(low - prev)))
    return np.where(np.isnan(prev), hl, tr)


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14) -> np.ndarray:
    """Average true range (Wilder smoothing of :func:`true_range`, TA-Lib ``ATR``)."""
    return wilder(true_range(high, low, close), period)


def obv(close: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """On-balance volume: cumulative volume signed by the close's direction (TA-Lib ``OBV``).

    The level starts at the first bar's volume, like TA-Lib; only its changes carry meaning.
    """
    close = np.asarray(close, dtype=np.float64)
    direction = np.sign(close - lag_rows(close, 1))
    flow = np.where(np.isnan(direction), 0.0, direction) * volume
    lead = ~np.logical_or.accumulate(~np.isnan(close), axis=0)
    prev_lead = np.ones_like(lead)
    prev_lead[1:] = lead[:-1]
    flow = np.where(~lead & prev_lead, volume, flow)  # the first bar counts its whole volume
    out = np.cumsum(np.where(lead, 0.0, flow), axis=0)
    out[lead] = np.nan
    return out


# --------------------------------------------------------------------------- feature tables

#: the fixed-period indicators (standard textbook parameters)
RSI_PERIOD, ATR_PERIOD, BB_WINDOW, STOCH_WINDOW = 14, 14, 20, 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9


def compute_indicators(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    windows: Sequence[int] = (5, 10, 20, 60),
    amount: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The "own" technical features of every stock, raw (not yet normalised).

    Inputs are ``[T, N]``, already forward-filled over suspensions (leading NaN before
    listing). Returns ``(features, warmup)``: ``features[name]`` is ``float32 [T, N]`` and
    ``warmup[name]`` the number of earlier bars it needs before it is trusted.

    Features (returns are **log** returns; "ratio" means ``x / reference - 1``):

    - ``ret1``, ``ret<w>``: log return over 1 and each window bars.
    - ``ma<w>``: ``close / SMA_w - 1``; ``ema12``, ``ema26``: ``close / EMA - 1``.
    - ``rsi14``: ``(RSI - 50) / 50`` in ``[-1, 1]``.
    - ``macd``, ``macd_signal``, ``macd_hist``: MACD(12, 26, 9) divided by close.
    - ``bb_pctb``, ``bb_width``: Bollinger(20, 2) %B and ``(upper - lower) / middle``.
    - ``atr14``: ATR(14) / close.
    - ``vol<w>``: standard deviation of 1-bar log returns over each window.
    - ``volume_ratio<w>``: ``log((volume + 1) / (SMA_w(volume) + 1))`` for windows <= 20
      (log, so zero-volume bars and indices without volume stay finite).
    - ``obv_change20``: OBV change over 20 bars / volume traded in them, in ``[-1, 1]``.
    - ``range``: ``(high - low) / close``; ``close_pos``: ``(close - low) / (high - low)``
      (0.5 when high == low); ``gap``: ``open / previous close - 1``.
    - ``stoch14``: ``(close - min low_14) / (max high_14 - min low_14)``.
    - ``dist_high20``, ``dist_low20``: ``close / max high_20 - 1``, ``close / min low_20 - 1``.
    - ``dollar_volume20``: ``log(1 + SMA_20(close * volume))`` (a turnover proxy), or
      ``amount_ratio20`` = ``log((amount + 1) / (SMA_20(amount) + 1))`` when ``amount`` is given.
    """
    c = np.asarray(close, dtype=np.float64)
    o, h, lo, v = (np.asarray(a, dtype=np.float64) for a in (open_, high, low, volume))
    f: dict[str, np.ndarray] = {}
    warm: dict[str, int] = {}

    def put(name: str, value: np.ndarray, bars: int) -> None:
        f[name], warm[name] = value.astype(np.float32), bars

    logret1 = log_return(c, 1)
    put("ret1", logret1, 1)
    for w in windows:
        put(f"ret{w}", log_return(c, w), w)
    for w in windows:
        put(f"ma{w}", c / sma(c, w) - 1.0, w - 1)
    # EMAs never finish warming up: trust them after ~2 periods
    put("ema12", c / ema(c, 12) - 1.0, 24)
    put("ema26", c / ema(c, 26) - 1.0, 2 * 26)
    put(f"rsi{RSI_PERIOD}", (rsi(c, RSI_PERIOD) - 50.0) / 50.0, 2 * RSI_PERIOD)
    line, sig, hist = macd(c, MACD_FAST, MACD_SLOW, MACD_SIGNAL)
    put("macd", line / c, 2 * MACD_SLOW)
    put("macd_signal", sig / c, 2 * MACD_SLOW)
    put("macd_hist", hist / c, 2 * MACD_SLOW)
    upper, mid, lower = bollinger(c, BB_WINDOW, 2.0)
    put("bb_pctb", _safe_div(c - lower, upper - lower, fill=0.5), BB_WINDOW - 1)
    put("bb_width", _safe_div(upper - lower, mid, fill=0.0), BB_WINDOW - 1)
    put(f"atr{ATR_PERIOD}", atr(h, lo, c, ATR_PERIOD) / c, 2 * ATR_PERIOD)
    for w in windows:
        put(f"vol{w}", rolling_std(logret1, w), w)
    for w in (w for w in windows if w <= 20):
        put(f"volume_ratio{w}", np.log((v + 1.0) / (sma(v, w) + 1.0)), w - 1)
    signed = np.sign(c - lag_rows(c, 1)) * v
    put("obv_change20", _safe_div(rolling_sum(signed, 20), rolling_sum(v, 20), fill=0.0), 20)
    put("range", (h - lo) / c, 0)
    put("close_pos", _safe_div(c - lo, h - lo, fill=0.5), 0)
    put("gap", o / lag_rows(c, 1) - 1.0, 1)
    hh, ll = rolling_max(h, STOCH_WINDOW), rolling_min(lo, STOCH_WINDOW)
    put(f"stoch{STOCH_WINDOW}", _safe_div(c - ll, hh - ll, fill=0.5), STOCH_WINDOW - 1)
    put("dist_high20", c / rolling_max(h, 20) - 1.0, 19)
    put("dist_low20", c / rolling_min(lo, 20) - 1.0, 19)
    if amount is not None:
        a = np.asarray(amount, dtype=np.float64)
        put("amount_ratio20", np.log((a + 1.0) / (sma(a, 20) + 1.0)), 19)
    else:
        put("dollar_volume20", np.log1p(sma(c * v, 20)), 19)
    return f, warm


def index_indicators(close: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The market-index features of ``close [T, K]`` (one column per index), raw.

    ``ret1``, ``ret5``, ``ret20`` (log), ``vol20`` (std of 1-bar log returns), ``ma20``
    (``close / SMA_20 - 1``) and ``rsi14`` (``(RSI - 50) / 50``); returns ``(features, warmup)``.
    """
    c = np.asarray(close, dtype=np.float64)
    logret1 = log_return(c, 1)
    f = {
        "ret1": logret1,
        "ret5": log_return(c, 5),
        "ret20": log_return(c, 20),
        "vol20": rolling_std(logret1, 20),
        "ma20": c / sma(c, 20) - 1.0,
        "rsi14": (rsi(c, 14) - 50.0) / 50.0,
    }
    warm = {"ret1": 1, "ret5": 5, "ret20": 20, "vol20": 20, "ma20": 19, "rsi14": 28}
    return f, warm
