"""Signal metrics over numpy arrays, in the field's vocabulary: daily IC / Rank IC, ICIR, MSE,
direction accuracy, and for quantile forecasts pinball loss and interval coverage.

Conventions (as in qlib): IC is the cross-sectional Pearson correlation between predictions
and realised labels at one date, Rank IC the Spearman correlation (average ranks for ties);
the reported IC is the mean over dates and ICIR = mean / std over dates (not annualised).

A cell counts as valid where ``mask`` is True and both ``pred`` and ``label`` are finite.
A date with fewer than two valid cells, or zero variance on either side, has a NaN IC and is
left out of the summaries.

This module sits on the ground floor (numpy only) because estimators (the Stage2 booster's
validation report), training (model selection on validation Rank IC) and evaluation all use
it; :mod:`relcast.training.torch_metrics` holds the torch versions of IC and Rank IC.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "average_ranks",
    "daily_ic",
    "daily_rank_ic",
    "interval_coverage",
    "pinball_loss",
    "signal_metrics",
    "summarize_ic",
]


def _valid_cells(
    pred: np.ndarray, label: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate shapes and return ``pred, label`` as float64 and the valid-cell mask."""
    pred = np.asarray(pred, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    if pred.shape != label.shape:
        raise ValueError(f"pred has shape {pred.shape} but label has shape {label.shape}")
    if pred.ndim != 2:
        raise ValueError(
            f"expected [T, N] arrays (dates x stocks), got shape {pred.shape}; "
            "select one horizon first, e.g. pred[..., h]"
        )
    valid = np.isfinite(pred) & np.isfinite(label)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != pred.shape:
            raise ValueError(f"mask has shape {mask.shape}, expected {pred.shape}")
        valid &= mask
    return pred, label, valid


def _masked_pearson(x: np.ndarray, y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation over the valid cells of ``[T, N]`` arrays -> ``[T]``."""
    n = valid.sum(axis=1)
    x = np.where(valid, x, 0.0)
    y = np.where(valid, y, 0.0)
    safe_n = np.maximum(n, 1)[:, None]
    xc = np.where(valid, x - x.sum(axis=1, keepdims=True) / safe_n, 0.0)
    yc = np.where(valid, y - y.sum(axis=1, keepdims=True) / safe_n, 0.0)
    sxy = (xc * yc).sum(axis=1)
    sxx = (xc * xc).sum(axis=1)
    syy = (yc * yc).sum(axis=1)
    denom = np.sqrt(sxx * syy)
    # relative tolerance: constant rows leave rounding noise of order eps * |mean|
    scale_x = (x * x).sum(axis=1) + 1e-300
    scale_y = (y * y).sum(axis=1) + 1e-300
    degenerate = (n < 2) | (sxx <= 1e-24 * scale_x) | (syy <= 1e-24 * scale_y)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.where(degenerate, 1.0, denom)
    return np.where(degenerate, np.nan, np.clip(r, -1.0, 1.0))


def average_ranks(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Row-wise ranks ``1..n_valid`` of ``x [T, N]`` with ties averaged; NaN where not valid.

    Vectorised (one sort for all rows), equal to ``scipy.stats.rankdata(method="average")``
    applied to each row's valid cells.
    """
    x = np.where(valid, np.asarray(x, dtype=np.float64), np.inf)  # invalid cells sort last
    T, N = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    s = np.take_along_axis(x, order, axis=1)
    pos = np.broadcast_to(np.arange(N), (T, N))
    is_start = np.ones((T, N), dtype=bool)
    is_start[:, 1:] = s[:, 1:] != s[:, :-1]
    is_end = np.ones((T, N), dtype=bool)
    is_end[:, :-1] = is_start[:, 1:]
    start = np.maximum.accumulate(np.where(is_start, pos, 0), axis=1)
    end = np.minimum.accumulate(np.where(is_end, pos, N)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((T, N), dtype=np.float64)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=1)
    return np.where(valid, ranks, np.nan)


def daily_ic(pred: np.ndarray, label: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Cross-sectional Pearson IC per date: ``[T, N], [T, N] -> [T]`` (NaN where undefined)."""
    pred, label, valid = _valid_cells(pred, label, mask)
    return _masked_pearson(pred, label, valid)


def daily_rank_ic(
    pred: np.ndarray, label: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Cross-sectional Spearman Rank IC per date (average ranks for ties): ``-> [T]``."""
    pred, label, valid = _valid_cells(pred, label, mask)
    return _masked_pearson(average_ranks(pred, valid), average_ranks(label, valid), valid)


def summarize_ic(daily: np.ndarray) -> dict[str, float]:
    """Mean IC, ICIR = mean / std over dates (ddof=1, not annualised) and the number of dates.

    NaN dates (too few stocks) are dropped. ICIR is NaN with fewer than two dates or a zero std.
    """
    daily = np.asarray(daily, dtype=np.float64)
    daily = daily[np.isfinite(daily)]
    n = int(daily.size)
    mean = float(daily.mean()) if n else float("nan")
    std = float(daily.std(ddof=1)) if n > 1 else float("nan")
    icir = mean / std if n > 1 and std > 0 else float("nan")
    return {"ic": mean, "icir": icir, "n_dates": n}


def signal_metrics(
    pred: np.ndarray, label: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """All point-forecast metrics for one horizon of ``[T, N]`` predictions.

    Returns ``ic, rank_ic, icir, rank_icir`` (means over dates, ICIR = mean/std), ``mse`` over
    valid cells, ``direction_acc`` = share of valid cells with a nonzero label whose sign the
    prediction gets right, and ``n_dates`` = dates with a defined IC.
    """
    pred, label, valid = _valid_cells(pred, label, mask)
    ic = summarize_ic(_masked_pearson(pred, label, valid))
    ranks = (average_ranks(pred, valid), average_ranks(label, valid))
    rank_ic = summarize_ic(_masked_pearson(*ranks, valid))
    p, y = pred[valid], label[valid]
    mse = float(np.mean((p - y) ** 2)) if p.size else float("nan")
    signed = y != 0
    direction = (
        float(np.mean(np.sign(p[signed]) == np.sign(y[signed]))) if signed.any() else float("nan")
    )
    return {
        "ic": ic["ic"],
        "rank_ic": rank_ic["ic"],
        "icir": ic["icir"],
        "rank_icir": rank_ic["icir"],
        "mse": mse,
        "direction_acc": direction,
        "n_dates": ic["n_dates"],
    }


def pinball_loss(pred_q: np.ndarray, y: np.ndarray, quantiles: Sequence[float]) -> float:
    """Mean pinball (quantile) loss of ``pred_q [..., Q]`` against ``y [...]`` over finite cells.

    For quantile q and error e = y - pred: ``max(q * e, (q - 1) * e)``, averaged over cells
    and quantiles.
    """
    pred_q = np.asarray(pred_q, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    q = np.asarray(quantiles, dtype=np.float64)
    if pred_q.shape != (*y.shape, q.size):
        raise ValueError(f"pred_q has shape {pred_q.shape}, expected {(*y.shape, q.size)}")
    if ((q <= 0) | (q >= 1)).any():
        raise ValueError(f"quantiles must lie in (0, 1), got {q.tolist()}")
    ok = np.isfinite(y)[..., None] & np.isfinite(pred_q)
    err = y[..., None] - pred_q  # (..., Q)
    loss = np.maximum(q * err, (q - 1.0) * err)
    return float(loss[ok].mean()) if ok.any() else float("nan")


def interval_coverage(lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> float:
    """Share of finite ``y`` that fall inside ``[lo, hi]`` (an 80% interval should give ~0.8)."""
    lo, hi, y = (np.asarray(a, dtype=np.float64) for a in (lo, hi, y))
    ok = np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return float("nan")
    inside = (y >= lo) & (y <= hi)
    return float(inside[ok].mean())
