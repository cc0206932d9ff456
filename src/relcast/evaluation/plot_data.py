"""What the report and the app both show, computed once from a run's tables.

The HTML report (:mod:`relcast.evaluation.report`) and the web app (:mod:`relcast.app`) draw
the same plots; these functions turn ``predictions.parquet`` and ``backtest.parquet`` into
what the plots in :mod:`relcast.evaluation.plots` take, so the two cannot drift apart.

Scales: ``label`` in predictions.parquet is the raw forward return, while Stage1/Stage3
predictions and quantiles are on the scale of labels z-scored across stocks at each date
(what they are trained on). A prediction band therefore z-scores the realised label per date
(:func:`zscore_by_date`), and a point forecast without quantiles too (its scale is arbitrary).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "PredictionBand",
    "PredictionFile",
    "backtest_series",
    "prediction_band",
    "quantile_columns",
    "zscore_by_date",
]

_QUANTILE = re.compile(r"q\d*\.?\d+")


def quantile_columns(frame: pd.DataFrame) -> list[str]:
    """The quantile forecast columns (``q0.1``, ``q0.5``, ...) of a predictions table,
    sorted by quantile."""
    cols = [c for c in frame.columns if _QUANTILE.fullmatch(str(c))]
    return sorted(cols, key=lambda c: float(c[1:]))


class PredictionFile:
    """``predictions.parquet`` read a piece at a time: the rows of one model at one horizon
    and the columns asked for (evaluate writes each model's rows in row groups of their own,
    which pyarrow skips for the other models), so memory grows with one model's test span,
    not with the whole table.

    ``models`` (in file order), ``horizons`` (sorted) and ``symbols`` come from one pass
    over the row groups' ``model, horizon, symbol`` columns."""

    def __init__(self, path: str | Path) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        file = pq.ParquetFile(self.path)
        self.columns: list[str] = list(file.schema_arrow.names)
        models: dict[str, set[int]] = {}
        symbols: set[str] = set()
        for i in range(file.num_row_groups):
            group = file.read_row_group(i, columns=["model", "horizon", "symbol"])
            keys = ["model", "horizon"]  # unthreaded: groups in order of first appearance
            pairs = group.select(keys).group_by(keys, use_threads=False).aggregate([])
            for m, h in zip(*(pairs[c].to_pylist() for c in ("model", "horizon")), strict=True):
                models.setdefault(m, set()).add(int(h))
            symbols.update(str(v) for v in group["symbol"].unique().to_pylist())
        self.by_model = models  # model -> its horizons (models in file order)
        self.symbols = symbols

    @property
    def models(self) -> list[str]:
        return list(self.by_model)

    @property
    def horizons(self) -> list[int]:
        return sorted(set().union(*self.by_model.values()))

    def quantile_columns(self) -> list[str]:
        """As :func:`quantile_columns` of the whole table."""
        return quantile_columns(pd.DataFrame(columns=self.columns))

    def rows(self, model: str, horizon: int, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The rows of ``model`` at ``horizon`` (file order), ``columns`` (default: all);
        ``date`` as datetime."""
        import pyarrow.parquet as pq

        cols = None if columns is None else [c for c in self.columns if c in set(columns)]
        filters = [("model", "==", model), ("horizon", "==", int(horizon))]
        frame = pq.read_table(self.path, columns=cols, filters=filters).to_pandas()
        if "date" in frame:
            frame["date"] = pd.to_datetime(frame["date"])
        return frame


def zscore_by_date(frame: pd.DataFrame, column: str) -> pd.Series:
    """``column`` z-scored across the rows of each date (population std, ddof=0)."""
    by_date = frame.groupby("date")[column]
    return (frame[column] - by_date.transform("mean")) / by_date.transform("std", ddof=0)


@dataclass(frozen=True)
class PredictionBand:
    """One stock's forecasts over the test span, ready for ``plots.prediction_bands``.

    Attributes:
        dates: ``datetime64 [T]``.
        label: realised label, z-scored across stocks at each date ``[T]``.
        pred: the forecast ``[T]`` (z-scored the same way when the model has no quantiles).
        lo, hi: lowest and highest quantile ``[T]``, or None without quantiles.
        band_label: e.g. ``"q0.1-q0.9 interval"``.
    """

    dates: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    lo: np.ndarray | None
    hi: np.ndarray | None
    band_label: str

    @property
    def has_interval(self) -> bool:
        """True when the model forecast quantiles (an interval to draw)."""
        return self.lo is not None


def prediction_band(
    predictions: pd.DataFrame, model: str, symbol: str, horizon: int = 1
) -> PredictionBand:
    """The band of ``model``'s ``horizon`` forecasts for ``symbol`` (see :class:`PredictionBand`).

    Z-scores are taken across all stocks the model predicted at each date, before the one
    stock is picked. Raises ValueError naming what is missing.
    """
    mine = (predictions["model"] == model) & (predictions["horizon"] == horizon)
    # the rows of one model and horizon (what PredictionFile.rows reads) are taken as they
    # are: a boolean selection would copy every column of millions of rows
    sub = predictions.copy(deep=False) if mine.all() else predictions[mine].copy()
    if sub.empty:
        raise ValueError(f"no predictions for model {model!r} at horizon {horizon}")
    qcols = [c for c in quantile_columns(sub) if sub[c].notna().any()]
    sub["label_z"] = zscore_by_date(sub, "label")
    pred = "pred"
    if not qcols:  # point scores may be on any scale (e.g. momentum): z-score them too
        sub["pred_z"] = zscore_by_date(sub, "pred")
        pred = "pred_z"
    one = sub[sub["symbol"].astype(str) == str(symbol)].sort_values("date")
    if one.empty:
        raise ValueError(f"no predictions for {symbol!r} from {model!r}")
    return PredictionBand(
        dates=pd.to_datetime(one["date"]).to_numpy(),
        label=one["label_z"].to_numpy(float),
        pred=one[pred].to_numpy(float),
        lo=one[qcols[0]].to_numpy(float) if qcols else None,
        hi=one[qcols[-1]].to_numpy(float) if qcols else None,
        band_label=f"{qcols[0]}-{qcols[-1]} interval" if qcols else "interval",
    )


def backtest_series(
    backtest: pd.DataFrame, strategy: str, models: Sequence[str] | None = None
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray] | None]:
    """Daily returns after costs per model, and the benchmark's, for ``plots.cumulative_returns``.

    Args:
        backtest: backtest.parquet (``date, model, strategy, daily_return, benchmark_return``).
        strategy: ``"topk"`` or ``"long_short"``.
        models: models to include, in this order (default: every model, in file order).
    Returns ``({model: (dates, daily_return)}, (dates, benchmark_return) or None)``; the
    benchmark only for ``topk`` (long-short is market-neutral). Raises ValueError when the
    table has no row of that strategy.
    """
    part = backtest[backtest["strategy"] == strategy].sort_values("date")
    if part.empty:
        raise ValueError(f"no {strategy!r} rows in backtest.parquet")
    names = list(dict.fromkeys(part["model"])) if models is None else list(models)
    series = {}
    for m in names:
        g = part[part["model"] == m]
        if not g.empty:
            series[m] = (g["date"].to_numpy(), g["daily_return"].to_numpy())
    bench = None
    if strategy == "topk" and "benchmark_return" in part:
        b = part.groupby("date")["benchmark_return"].first()
        bench = (b.index.to_numpy(), b.to_numpy())
    return series, bench
