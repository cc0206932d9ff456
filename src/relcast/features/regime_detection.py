"""Market regime (bull / bear / sideways) of each date, from the index's own past.

The design names "dynamic relationship weighting by market regime". Detection is a
feature of the data (no learning), so it lives on the features floor:
:func:`detect_regime` labels each date from the index's trailing return and moving-average
slope (no data after t), :func:`regime_features` one-hot encodes it. The learned gate that
reweights relationship features by regime is :mod:`relcast.models.regime_gate`.
"""

from __future__ import annotations

import numpy as np

BULL, BEAR, SIDEWAYS = 0, 1, 2
REGIME_NAMES = ("bull", "bear", "sideways")
NUM_REGIMES = 3


def _trailing_sum(x: np.ndarray, window: int) -> np.ndarray:
    """``out[t] = x[t-window+1] + ... + x[t]``; NaN for the first ``window-1`` dates."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    out = np.full(len(x), np.nan)
    if len(x) >= window:
        out[window - 1 :] = c[window:] - c[: len(x) - window + 1]
    return out


def detect_regime(
    index_close: np.ndarray,
    window: int = 60,
    threshold: float | None = None,
    slope_lag: int | None = None,
) -> np.ndarray:
    """Regime of every date from the index's close up to that date: ``int [T]``.

    ``0`` bull, ``1`` bear, ``2`` sideways. Bull when the trailing ``window``-day log
    return exceeds the threshold *and* the ``window``-day moving average is rising over
    the last ``slope_lag`` days; bear for the mirror case; sideways otherwise, and for the
    warm-up dates where the window is not full.

    Args:
        index_close: ``[T]`` index closing prices; NaN (closed days) are carried forward
            from the last known close, never filled from the future.
        window: trailing window in dates.
        threshold: absolute log-return threshold. ``None`` scales it to the index's own
            trailing volatility: ``0.5 * std(daily log return over window) * sqrt(window)``,
            so the same call works for daily and intraday bars.
        slope_lag: lag of the moving-average slope; defaults to ``window // 4``.

    Only ``index_close[: t + 1]`` influences ``regime[t]``.
    """
    close = np.asarray(index_close, dtype=np.float64)
    if close.ndim != 1:
        raise ValueError(f"index_close must be 1-D [T], got shape {close.shape}")
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if np.any(close[np.isfinite(close)] <= 0):
        raise ValueError("index_close must be positive")
    slope_lag = max(1, window // 4) if slope_lag is None else slope_lag
    T = len(close)
    # Causal forward fill: index of the last finite value at or before t.
    idx = np.where(np.isfinite(close), np.arange(T), 0)
    np.maximum.accumulate(idx, out=idx)
    logp = np.log(close[idx])  # (T,), NaN before the first finite close

    trailing_ret = np.full(T, np.nan)
    trailing_ret[window:] = logp[window:] - logp[:-window]
    ma = _trailing_sum(logp, window) / window
    slope = np.full(T, np.nan)
    slope[slope_lag:] = ma[slope_lag:] - ma[:-slope_lag]

    if threshold is None:
        daily = np.diff(logp, prepend=np.nan)
        s1 = _trailing_sum(np.nan_to_num(daily), window)
        s2 = _trailing_sum(np.nan_to_num(daily) ** 2, window)
        var = np.maximum(s2 / window - (s1 / window) ** 2, 0.0)
        thr = 0.5 * np.sqrt(var * window)
    else:
        thr = np.full(T, float(threshold))

    with np.errstate(invalid="ignore"):
        bull = (trailing_ret > thr) & (slope > 0)
        bear = (trailing_ret < -thr) & (slope < 0)
    regime = np.full(T, SIDEWAYS, dtype=np.int64)
    regime[bull] = BULL
    regime[bear] = BEAR
    return regime


def regime_features(regime: np.ndarray) -> np.ndarray:
    """One-hot ``float32 [T, 3]`` (bull, bear, sideways) of a regime array ``int [T]``."""
    regime = np.asarray(regime)
    if regime.size and (regime.min() < 0 or regime.max() >= NUM_REGIMES):
        raise ValueError(f"regime values must be in 0..{NUM_REGIMES - 1}")
    return np.eye(NUM_REGIMES, dtype=np.float32)[regime]


REGIME_COLUMNS = tuple(f"regime_{name}" for name in REGIME_NAMES)
"""Feature names of the one-hot regime group (``build_features(regime_window=...)``)."""
