"""The tables a scored run saves beside metrics.json, built from arrays (no file access):
``predictions.parquet`` (:func:`prediction_table`) and ``backtest.parquet``
(:func:`backtest_table`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from relcast.evaluation.scoring import CONSTANT, ScoredSpan, ScoreSettings, backtests


def prediction_table(
    name: str,
    pred: np.ndarray,
    quantiles: np.ndarray | None,
    labels: np.ndarray,
    span: ScoredSpan,
    dates: np.ndarray,
    symbols: np.ndarray,
    levels=None,
) -> pd.DataFrame:
    """One model's test-span rows: date, symbol, model, horizon, pred, label, label_z [, q*].

    ``label`` is the raw forward return; ``label_z`` its cross-sectional z-score, the unit
    Stage1/Stage3 forecasts and quantiles are in (compare bands with ``label_z``)."""
    days = span.days
    H = pred.shape[2]
    t, n = np.nonzero(span.mask[days])
    t = days[t]
    parts = []
    for h in range(H):
        frame = pd.DataFrame(
            {
                "date": dates[t],
                "symbol": symbols[n],
                "model": name,
                "horizon": h + 1,
                "pred": pred[t, n, h].astype(np.float32),
                "label": labels[t, n, h].astype(np.float32),
                "label_z": span.z[t, n, h].astype(np.float32),
            }
        )
        if quantiles is not None:
            for k, level in enumerate(levels):
                frame[f"q{level:g}"] = quantiles[t, n, h, k]
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def backtest_table(
    name: str,
    pred: np.ndarray,
    labels: np.ndarray,
    span: ScoredSpan,
    benchmark: np.ndarray,
    dates: np.ndarray,
    settings: ScoreSettings,
) -> pd.DataFrame:
    """Daily returns of one model's top-k and long-short portfolios (none for naive_zero)."""
    if name == CONSTANT:
        return pd.DataFrame()
    days = span.days
    _, (tk, ls) = backtests(pred[..., 0], labels[..., 0], span.mask, days, benchmark, settings)
    common = {"date": dates[days], "model": name}
    return pd.concat(
        [
            pd.DataFrame(
                {
                    **common,
                    "strategy": "topk",
                    "daily_return": tk.daily_return,
                    "benchmark_return": benchmark[days],
                    "excess_return": tk.excess_return,
                    "turnover": tk.turnover,
                }
            ),
            pd.DataFrame(
                {
                    **common,
                    "strategy": "long_short",
                    "daily_return": ls.daily_return,
                    "benchmark_return": benchmark[days],
                    "excess_return": ls.daily_return,
                    "turnover": ls.turnover,
                }
            ),
        ],
        ignore_index=True,
    )
