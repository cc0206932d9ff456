"""Factor-neutral scores: what a forecast adds beyond the factor baselines.

A forecast that ranks stocks by yesterday's loss scores a Rank IC of 0.03 on NASDAQ 2017
without knowing anything else. To see what a model adds beyond the factors
(:mod:`relcast.features.factors`), on each date its forecast is regressed across the scored
stocks on the factors and an intercept (least squares), and the residual is scored like any
forecast: Rank IC, IC, their Newey-West t and the paired tests on its daily Rank IC.

- Cells: those the model is scored on (``cell``: traded target stocks, finite forecast).
- Regressors: each factor z-scored across those cells on that date; a factor undefined on a
  cell (too little history) takes the date's mean there (0 after z-scoring) rather than
  dropping the cell, so every model is scored on the same cells raw and neutral.
- A date whose residual is nothing (the forecast is a linear mix of the factors up to
  rounding, e.g. a factor itself) or that has fewer than ``K + 3`` cells has no residual
  (NaN): its neutral IC is undefined, not a correlation of rounding noise.

Pure functions over arrays, a block of dates at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BLOCK_CELLS = 2**20  # (date, stock) cells regressed at a time: (cells, K + 1) float64 designs
RESIDUAL_TOLERANCE = 1e-16  # residual sum of squares / centred forecast's: below it, nothing


def neutralize(
    forecast: np.ndarray,
    factors: Sequence[np.ndarray],
    cell: np.ndarray,
    days: np.ndarray | None = None,
) -> np.ndarray:
    """``float64 [D, N]``: the residual of ``forecast`` on the ``factors`` (+ intercept) per
    date, over the cells where ``cell`` holds and the forecast is finite (NaN elsewhere).

    ``forecast``, each factor and ``cell`` are ``[T, N]`` (views are fine: only the rows of
    ``days`` are read, a block at a time); ``days [D]`` (default: every date) the dates."""
    T, N = cell.shape
    days = np.arange(T) if days is None else np.asarray(days)
    K = len(factors)
    out = np.full((len(days), N), np.nan)
    step = max(1, BLOCK_CELLS // max(1, N * (K + 1)))
    for a in range(0, len(days), step):
        rows = days[a : a + step]
        y = np.asarray(forecast[rows], dtype=np.float64)  # (d, N)
        valid = np.asarray(cell[rows], dtype=bool) & np.isfinite(y)
        columns = [valid.astype(np.float64)]  # the intercept, on the valid cells only
        columns += [_zscore(np.asarray(f[rows], dtype=np.float64), valid) for f in factors]
        X = np.stack(columns, axis=-1)  # (d, N, K + 1), zero outside valid
        y = np.where(valid, y, 0.0)
        xtx = np.einsum("dnk,dnl->dkl", X, X)  # (d, K + 1, K + 1)
        xty = np.einsum("dnk,dn->dk", X, y)
        beta = np.einsum("dkl,dl->dk", np.linalg.pinv(xtx, rcond=1e-10, hermitian=True), xty)
        resid = np.where(valid, y - np.einsum("dnk,dk->dn", X, beta), np.nan)  # (d, N)
        n = valid.sum(axis=1)
        centred = np.where(valid, y - y.sum(axis=1, keepdims=True) / np.maximum(n, 1)[:, None], 0)
        spread = (centred**2).sum(axis=1)
        left = np.nansum(resid**2, axis=1)
        empty = (n < K + 3) | (left <= RESIDUAL_TOLERANCE * spread)
        resid[empty] = np.nan
        out[a : a + len(rows)] = resid
    return out


def _zscore(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``x [d, N]`` z-scored across the cells where ``valid`` holds and it is finite, 0 on
    the other valid cells (the date's mean) and outside ``valid``; 0 for a constant date."""
    ok = valid & np.isfinite(x)
    n = np.maximum(ok.sum(axis=1, keepdims=True), 1)
    v = np.where(ok, x, 0.0)
    mean = v.sum(axis=1, keepdims=True) / n
    centred = np.where(ok, v - mean, 0.0)
    std = np.sqrt((centred**2).sum(axis=1, keepdims=True) / n)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = centred / std
    return np.where(ok & (std > 0), z, 0.0)
