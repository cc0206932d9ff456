"""Signal metrics in the field's vocabulary: daily IC / Rank IC, ICIR, MSE, direction accuracy,
and for quantile forecasts pinball loss and interval coverage.

The daily IC family is defined once in :mod:`relcast.models.metrics` (numpy) and
:mod:`relcast.training.metrics` (torch), low enough for estimators and training to use;
this module re-exports them so evaluation code has one place to import metrics from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from relcast.models.metrics import (
    average_ranks,
    daily_ic,
    daily_rank_ic,
    signal_metrics,
    summarize_ic,
)
from relcast.training.metrics import ic_torch, rank_ic_torch

__all__ = [
    "average_ranks",
    "daily_ic",
    "daily_rank_ic",
    "ic_torch",
    "interval_coverage",
    "pinball_loss",
    "rank_ic_torch",
    "signal_metrics",
    "summarize_ic",
]


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
