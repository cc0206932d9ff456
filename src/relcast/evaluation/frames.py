"""The tables a scored run saves beside metrics.json, built from arrays (no file access):
``predictions.parquet`` (:func:`prediction_table`, or piece by piece :func:`prediction_frames`
and :func:`write_frames`) and ``backtest.parquet`` (:func:`backtest_table`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from relcast.evaluation.scoring import CONSTANT, ScoredSpan, ScoreSettings, backtests

PIECE_ROWS = 2**18  # rows of predictions.parquet built (and written) at a time

BASE_COLUMNS = ("date", "symbol", "model", "horizon", "pred", "label", "label_z")


def prediction_columns(levels=None) -> list[str]:
    """Columns of predictions.parquet: the base ones, then ``q<level>`` per quantile level
    when any model of the run has quantile forecasts (NaN in the rows of those without)."""
    return [*BASE_COLUMNS, *(f"q{level:g}" for level in (levels or ()))]


@dataclass(frozen=True)
class PredictionRows:
    """What every model's rows of predictions.parquet share.

    Attributes:
        labels: raw forward returns ``[T, N, H]`` of the arrays' dates.
        span: the scored test span (:class:`~relcast.evaluation.scoring.ScoredSpan`).
        dates: ``[T]`` dates of the arrays; symbols: ``[N]``.
        levels: the quantile levels of ``q<level>`` columns (None: no quantile columns).
    """

    labels: np.ndarray
    span: ScoredSpan
    dates: np.ndarray
    symbols: np.ndarray
    levels: Sequence[float] | None = None


def prediction_frames(
    name: str,
    pred: np.ndarray,
    quantiles: np.ndarray | None,
    rows: PredictionRows,
    max_rows: int = PIECE_ROWS,
) -> Iterator[pd.DataFrame]:
    """:func:`prediction_table`'s rows in pieces of at most ``max_rows`` (same order)."""
    labels, span, dates, symbols, levels = (
        rows.labels, rows.span, rows.dates, rows.symbols, rows.levels
    )  # fmt: skip
    days = span.days
    H = pred.shape[2]
    t, n = np.nonzero(span.mask[days])
    t = days[t]
    for h in range(H):
        for a in range(0, max(len(t), 1), max_rows):
            tb, nb = t[a : a + max_rows], n[a : a + max_rows]
            frame = pd.DataFrame(
                {
                    "date": dates[tb],
                    "symbol": symbols[nb],
                    "model": name,
                    "horizon": h + 1,
                    "pred": pred[tb, nb, h].astype(np.float32),
                    "label": labels[tb, nb, h].astype(np.float32),
                    "label_z": span.z[tb, nb, h].astype(np.float32),
                }
            )
            if quantiles is not None:
                for k, level in enumerate(levels):
                    frame[f"q{level:g}"] = quantiles[tb, nb, h, k]
            yield frame


def prediction_table(
    name: str, pred: np.ndarray, quantiles: np.ndarray | None, rows: PredictionRows
) -> pd.DataFrame:
    """One model's test-span rows: date, symbol, model, horizon, pred, label, label_z [, q*].

    ``label`` is the raw forward return; ``label_z`` its cross-sectional z-score, the unit
    Stage1/Stage3 forecasts and quantiles are in (compare bands with ``label_z``). Arrays
    cover the span's dates; ``rows.dates`` are theirs (``[T]``)."""
    pieces = prediction_frames(name, pred, quantiles, rows)
    return pd.concat(list(pieces), ignore_index=True)


def write_frames(path: str | Path, frames: Iterable[pd.DataFrame], columns: list[str]) -> None:
    """Write DataFrames one after the other as one Parquet file (a row group or more each),
    with ``columns`` in every row (missing ones as float32 NaN): reads back as their
    ``pd.concat``, without holding it in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, schema = None, None
    try:
        for frame in frames:
            for col in columns:
                if col not in frame:
                    frame[col] = np.float32(np.nan)
            table = pa.Table.from_pandas(frame[columns], schema=schema, preserve_index=False)
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(path, schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError(f"{path}: no tables to write")


def backtest_table(
    name: str,
    pred: np.ndarray,
    labels: np.ndarray,
    span: ScoredSpan,
    benchmark: np.ndarray,
    dates: np.ndarray,
    settings: ScoreSettings,
) -> pd.DataFrame:
    """Daily returns of one model's top-k and long-short portfolios (none for naive_zero);
    arrays (and ``benchmark``, ``dates``) cover the span's dates."""
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
