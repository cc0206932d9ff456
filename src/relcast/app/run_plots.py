"""The Evaluate tab's table and plots, drawn from a run folder (no Gradio needed).

The same table and plots as the HTML report: the cells come from
:func:`relcast.evaluation.metrics_table.metrics_table_rows`, the prediction band from
:func:`relcast.evaluation.plot_data.prediction_band` and the portfolio curves from
:func:`relcast.evaluation.plot_data.backtest_series`, so the app cannot drift from the report.

``predictions.parquet`` can hold tens of millions of rows (every model, horizon, stock and
test date): like the report, the app reads it through
:class:`relcast.evaluation.plot_data.PredictionFile`, one model and horizon at a time and only the
columns a view needs, never whole.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from relcast.evaluation import plots
from relcast.evaluation.metrics_table import COLUMNS, metrics_table_rows
from relcast.evaluation.plot_data import PredictionFile, backtest_series, prediction_band
from relcast.runfolder import RunFolder

STRATEGY_NAMES = {"topk": "top-k dropout", "long_short": "long-short"}


def safe_name(name: str) -> str:
    """``name`` with every character unsafe in a file name replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def metrics_frame(metrics: Mapping) -> pd.DataFrame:
    """metrics.json -> the report's metrics table as strings, one row per model.

    Same columns, formats, ``± std`` over seeds and ``*`` on the best value per column
    (controls excluded) as :func:`relcast.evaluation.metrics_table.metrics_table_text`.
    """
    return pd.DataFrame(metrics_table_rows(metrics), columns=["model", *(c.label for c in COLUMNS)])


def read_attention(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """attention.npz -> ``dates [T]``, ``symbols [N]``, ``attention [T, N, N]``."""
    stored = RunFolder(run_dir).load_attention()
    if stored is None:
        raise FileNotFoundError(f"{Path(run_dir) / 'attention.npz'} not found: evaluate first")
    return stored


def attention_plot(run_dir: str | Path, target: str, out_dir: str | Path) -> Path:
    """Heatmap of how ``target`` attends to every stock on each test date (Stage1)."""
    dates, symbols, attention = read_attention(run_dir)
    return plots.attention_heatmap(
        attention, dates, symbols, target, Path(out_dir) / f"attention_{safe_name(target)}.png"
    )


def importance_models(run_dir: str | Path) -> list[str]:
    """Models with a variable importance in importance.json (TFT), in file order."""
    return list(_importance(run_dir))


def _importance(run_dir: str | Path) -> dict:
    folder = RunFolder(run_dir)
    return folder.read_json("importance.json") if folder.has("importance.json") else {}


def importance_plot(run_dir: str | Path, model: str, out_dir: str | Path) -> Path | None:
    """Variable importance bars of a TFT model (None if the run has no importance)."""
    importance = _importance(run_dir)
    if model not in importance:
        return None
    return plots.variable_importance(
        importance[model],
        Path(out_dir) / f"importance_{safe_name(model)}.png",
        title=f"{model}: variable importance",
    )


def prediction_file(run_dir: str | Path) -> PredictionFile:
    """The run's predictions.parquet as a :class:`PredictionFile` (models, horizons, symbols;
    rows read a model and horizon at a time).

    Its one pass over the ``model, horizon, symbol`` columns is kept while the file is the
    same (path, size, modification time), so choosing another model or stock in the tab does
    not scan the whole file again. Raises FileNotFoundError when the run has no predictions.
    """
    path = RunFolder(run_dir).file("predictions.parquet")
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: evaluate first")
    stat = path.stat()
    return _prediction_file(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@functools.lru_cache(maxsize=8)
def _prediction_file(path: str, size: int, mtime_ns: int, inode: int) -> PredictionFile:
    return PredictionFile(path)  # the key's size/mtime/inode: a rewritten file is read again


def has_interval(predictions: PredictionFile, model: str) -> bool:
    """True when some row of ``model`` (any horizon) has every quantile column filled.

    Reads the quantile columns of one horizon of that model at a time."""
    qcols = predictions.quantile_columns()
    if not qcols:
        return False
    return any(
        predictions.rows(model, h, qcols).notna().all(axis=1).any()
        for h in sorted(predictions.by_model.get(model, ()))
    )


def prediction_models(predictions: PredictionFile) -> list[str]:
    """Models to offer for the prediction plot: those with intervals first, hybrid first
    (then file order); constant ``naive_zero`` forecasts are left out."""
    models = [m for m in predictions.models if not m.startswith("naive_zero")]
    with_q = {m for m in models if has_interval(predictions, m)}
    return sorted(models, key=lambda m: (m not in with_q, not m.startswith("hybrid")))


def prediction_plot(
    run_dir: str | Path, model: str, symbol: str, out_dir: str | Path, horizon: int = 1
) -> Path:
    """One stock's forecasts on the test span vs the realised return, with the interval.

    Models are trained on labels z-scored across stocks at each date, so the realised label
    is z-scored the same way (and point scores without quantiles too, whatever their scale).
    Reads the rows of ``model`` at ``horizon`` only (every stock: the z-scores are taken
    across them), and only the columns the band uses.
    """
    predictions = prediction_file(run_dir)
    columns = ["date", "symbol", "model", "horizon", "pred", "label"]
    frame = predictions.rows(model, horizon, [*columns, *predictions.quantile_columns()])
    band = prediction_band(frame, model, symbol, horizon)
    return plots.prediction_bands(
        band.dates,
        band.label,
        band.pred,
        band.lo,
        band.hi,
        f"{model}: {symbol}, horizon {horizon} (z-scores across stocks)",
        Path(out_dir) / f"pred_{safe_name(model)}_{safe_name(symbol)}.png",
        band_label=band.band_label,
    )


def backtest_plot(run_dir: str | Path, strategy: str, out_dir: str | Path) -> Path:
    """Cumulative returns after costs of every model's ``topk`` or ``long_short`` portfolio."""
    series, bench = backtest_series(RunFolder(run_dir).load_table("backtest.parquet"), strategy)
    return plots.cumulative_returns(
        series,
        Path(out_dir) / f"cumulative_{strategy}.png",
        benchmark=bench,
        title=f"Cumulative return: {STRATEGY_NAMES.get(strategy, strategy)} portfolio",
    )
