"""Labels: forward returns, defined once.

Feature transforms live in :mod:`relcast.features.normalize`; label transforms live here,
apart from them, so a feature can never be scaled with label statistics or vice versa.
"""

from __future__ import annotations

import numpy as np

from relcast.data.panel import Panel


def forward_returns(panel: Panel, horizons: int, delay: int = 0) -> np.ndarray:
    """Forward simple returns for horizons ``1..horizons``: ``float32 [T, N, horizons]``.

    ``label[t, n, h - 1] = close[t + delay + h, n] / close[t + delay, n] - 1``.

    ``delay=0`` means "signal and trade at t's close": the features of date t (which use
    data up to t's close) predict the return from t's close to t+h's close. ``delay=1`` is
    qlib's convention (``close[t+2] / close[t+1] - 1`` for h=1): the signal is computed
    after t's close and the trade happens at the next close.

    The label is NaN where the stock did not trade at ``t + delay`` or at ``t + delay + h``
    (suspended, not listed, delisted) and where ``t + delay + h`` is beyond the last date.
    Prices are never forward-filled here: a label always spans two real trades.
    """
    if horizons < 1:
        raise ValueError(f"horizons must be >= 1, got {horizons}")
    if delay < 0:
        raise ValueError(f"delay must be >= 0 (a negative delay would look back), got {delay}")
    close = np.where(panel.mask, panel.field("close"), np.nan).astype(np.float64)  # (T, N)
    T, N = close.shape
    out = np.full((T, N, horizons), np.nan, dtype=np.float32)
    for h in range(1, horizons + 1):  # a loop over horizons, not dates
        span = T - delay - h  # number of dates t with t + delay + h inside the panel
        if span > 0:
            out[:span, :, h - 1] = close[delay + h :] / close[delay : delay + span] - 1.0
    return out


def normalize_labels_cross_section(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Z-score labels within each date and horizon over the valid stocks (training targets).

    Args:
        labels: ``[T, N, H]`` forward returns (NaN where undefined).
        mask: ``bool [T, N]``: stocks that take part at each date (e.g. the FeatureSet mask).

    Returns ``float32 [T, N, H]``, NaN where the label is NaN or the stock is masked; 0 at a
    date where all valid labels are equal. Uses only date t's cross-section, so it is free of
    cross-date leakage, but it *is* a function of labels: use it for targets, never features.
    """
    y = np.where(mask[:, :, None], labels, np.nan).astype(np.float64)  # (T, N, H)
    count = np.isfinite(y).sum(axis=1, keepdims=True)  # (T, 1, H)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(y, axis=1, keepdims=True) / count
        std = np.sqrt(np.nansum((y - mean) ** 2, axis=1, keepdims=True) / count)
        z = (y - mean) / std
    z = np.where(np.isfinite(y) & ~(std > 0), 0.0, z)
    return z.astype(np.float32)


#: qlib's CSRankNorm scale: a uniform percentile minus 0.5 has std 1/sqrt(12) = 1/3.46
CS_RANK_SCALE = 3.46


def rank_normalize_labels_cross_section(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """qlib's ``CSRankNorm``: rank labels within each date and horizon, then z units.

    ``(rank_pct - 0.5) * 3.46``, with ``rank_pct`` the average-tie rank over the valid stocks
    divided by their count (pandas ``rank(pct=True)``), so values lie in ``(-1.73, 1.73]``
    with unit variance for distinct labels. Outliers lose their weight: a +50% day is just
    the top rank.

    Args:
        labels: ``[T, N, H]`` forward returns (NaN where undefined).
        mask: ``bool [T, N]``: stocks that take part at each date; the others neither get a
            value nor count in anyone's rank.

    Returns ``float32 [T, N, H]``, NaN where the label is NaN or the stock is masked. Like
    :func:`normalize_labels_cross_section` it is a function of labels: targets only.
    """
    from scipy.stats import rankdata

    y = np.where(mask[:, :, None], labels, np.nan).astype(np.float64)  # (T, N, H)
    ranks = rankdata(y, method="average", axis=1, nan_policy="omit")  # (T, N, H), NaN kept
    count = np.isfinite(y).sum(axis=1, keepdims=True)  # (T, 1, H)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (ranks / count - 0.5) * CS_RANK_SCALE
    return np.where(np.isfinite(y), z, np.nan).astype(np.float32)
