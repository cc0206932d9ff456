"""Turn a run folder into plots and one self-contained ``report.html`` (opens offline).

The run folder (written by :mod:`relcast.run.pipeline` and
:mod:`relcast.run.steps.evaluate`, read and
written here through :class:`relcast.runfolder.RunFolder`)::

    config.yaml          resolved configuration
    metrics.json         {"split": {"train": [start, end], "valid": [..], "test": [..],
                                    "embargo": int},
                          "labels": {...}, "test_dates_scored": int,
                          "models": {NAME: {"ic", "rank_ic", "icir", "rank_icir", "mse",
                                            "direction_acc", "rank_ic_by_horizon"?,
                                            "ic_t", "ic_p", "rank_ic_t", "rank_ic_p",
                                            "vs_lightgbm"?: {"t", "p", "mean_diff", ..},
                                            "vs_reversal"?, "vs_own"?: {...},
                                            "neutral"?: {"rank_ic", "ic", .., "vs_own"?},
                                            "pinball"?, "coverage"?, "coverage_nominal"?,
                                            "backtest": {"topk": {...}, "long_short": {...}},
                                            "seeds"?: {"<column>_std": float}, ...}}}
                         (NAME: naive_zero, reversal_1d, momentum_20d, ..., lightgbm, stage1,
                          stage1+stage2, stage3_own_gru, hybrid_gru, ...)
    predictions.parquet  date, symbol, model, horizon, pred, label [, q0.1, q0.5, q0.9]
    backtest.parquet     date, model, strategy ("topk" | "long_short"), daily_return,
                         benchmark_return, excess_return, turnover
    attention.npz        dates (int64 ns) [T], symbols (str) [N], attention float32 [T, N, N]
                         (Stage1 last layer, heads averaged, row i = how stock i attends to j)
    importance.json      {MODEL: {feature: weight}} (TFT variable importance)
    logs/<stage>/**/metrics.csv   Lightning CSVLogger files (epoch, step, train_loss, ...)

Only ``metrics.json`` is required. A plot whose input is missing is skipped with a note in the
HTML. :func:`build_report` writes the PNGs into ``plots/`` and embeds them in ``report.html``
as base64 data URIs, with inline CSS and no external URL, script or font.

Scales: ``label`` in predictions.parquet is the raw forward return, while Stage1/Stage3
predictions and quantiles are on the scale of labels z-scored across stocks at each date (what
they are trained on). The prediction-band plot therefore z-scores the realised label per date.
"""

from __future__ import annotations

import html
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from relcast.evaluation import plots
from relcast.evaluation.metrics_table import (
    daily_ic_series,
    metric_value,
    model_rows,
    simple_table_html,
)
from relcast.evaluation.plot_data import PredictionFile, backtest_series, prediction_band
from relcast.evaluation.report_html import data_health_html, figure_html, note, page_html
from relcast.features.factors import FACTORS
from relcast.runfolder import RunFolder, read_json

__all__ = ["build_report"]


BLOCK_VALUES = 2**25  # attention values read at a time (256 MB as float64)


def _choose_target(attention: np.ndarray, symbols: np.ndarray, candidates: set[str]) -> str:
    """The candidate whose time-averaged attention is most concentrated on one other stock."""
    n = attention.shape[1]
    total, count = np.zeros((n, n)), np.zeros((n, n))
    step = max(1, BLOCK_VALUES // max(1, n * n))  # blocks of dates: no copy of [T, N, N]
    for start in range(0, attention.shape[0], step):
        block = attention[start : start + step]
        ok = np.isfinite(block)
        total += np.where(ok, block, 0).sum(axis=0, dtype=np.float64)
        count += ok.sum(axis=0)
    with np.errstate(all="ignore"):
        mean = total / np.where(count > 0, count, np.nan)  # (N, N), NaN where never seen
    np.fill_diagonal(mean, -np.inf)
    score = np.where(np.isfinite(mean), mean, -np.inf).max(axis=1)  # (N,)
    allowed = (
        np.array([s in candidates for s in symbols]) if candidates else np.ones(len(symbols), bool)
    )
    score = np.where(allowed, score, -np.inf)
    return str(symbols[int(np.argmax(score))])


def _read_logs(logs_dir: Path) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Stage name -> metrics.csv frame; several CSVs of a stage get a ``version`` column."""
    curves, notes = {}, []
    for stage in sorted(p for p in logs_dir.iterdir() if p.is_dir()):
        files = sorted(stage.rglob("metrics.csv"))
        frames = []
        for f in files:
            try:
                frame = pd.read_csv(f)
            except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError) as err:
                notes.append(f"{f.relative_to(logs_dir.parent)} unreadable ({err})")
                continue
            if "epoch" in frame and not frame.empty:
                # e.g. "fold_0/logs/version_0": folds and reruns stay apart
                fit = str(f.parent.relative_to(stage))
                frames.append(frame.assign(version=fit) if len(files) > 1 else frame)
        if frames:
            curves[stage.name] = pd.concat(frames, ignore_index=True)
    return curves, notes


_STRATEGY = {"topk": "top-k dropout", "long_short": "long-short"}


def _data_health_html(path: Path) -> list[str]:
    """The data-health section from a data_health.json path (nothing when it is missing)."""
    return data_health_html(read_json(path) if Path(path).is_file() else None)


def _regime_gates(folder: RunFolder) -> dict[str, dict]:
    """``{model: {regime: {"index": s, "sector": s}}}`` logged by a regime-gated Stage3."""
    if not folder.has("run.json"):
        return {}
    stage3 = folder.run_info().get("steps", {}).get("stage3", {})
    return {
        name: info["regime_gate_scales"]
        for name, info in stage3.get("models", {}).items()
        if info.get("regime_gate_scales")
    }


def build_report(run_dir: str | Path, target: str | None = None) -> Path:
    """Write ``plots/*.png`` and a self-contained ``report.html`` for a run folder.

    Args:
        run_dir: the run folder (see the module docstring for its layout).
        target: symbol whose attention and prediction bands are shown; default: the stock
            whose average Stage1 attention is most concentrated on one other stock.

    Returns the path of ``report.html``. Missing optional inputs are skipped with a note.
    """
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if not folder.has("metrics.json"):
        raise FileNotFoundError(
            f"{folder.file('metrics.json')} not found: run the evaluate step first "
            "(relcast evaluate RUN)"
        )
    metrics = folder.load_metrics()
    models = model_rows(metrics)
    plot_dir = folder.file("plots")
    plot_dir.mkdir(parents=True, exist_ok=True)
    config_text = folder.config_text()
    health = folder.read_json("data_health.json") if folder.has("data_health.json") else None

    sections: list[str] = []

    def draw(title: str, caption: str, fn: Callable[[], Path]) -> None:
        """Run one plot; a failure becomes a note instead of losing the whole report."""
        try:
            sections.append(figure_html(fn(), caption))
        except Exception as err:  # noqa: BLE001 - the rest of the report is still worth having
            warnings.warn(f"report: could not draw {title}: {err}", stacklevel=2)
            sections.append(note(f"Could not draw {title}: {type(err).__name__}: {err}"))

    # read a model (and horizon) at a time: the whole table can outgrow memory
    has_predictions = folder.has("predictions.parquet")
    predictions = PredictionFile(folder.file("predictions.parquet")) if has_predictions else None
    predicted = predictions.symbols if predictions is not None else set()

    # --- attention
    sections.append("<h2>Which stocks influence the target (Stage1 attention)</h2>")
    stored = folder.load_attention()
    if stored is not None:
        att_dates, att_symbols, attention = stored
        if target is None:
            target = _choose_target(attention, att_symbols, predicted)
        if target not in att_symbols:
            sections.append(note(f"Skipped: target {target!r} is not in attention.npz."))
        else:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", target)
            draw(
                "the attention heatmap",
                f"How {target} attends to each stock on each test date (left; grey = no data) "
                "and on average (right). High weight = that stock's representation feeds "
                f"{target}'s Stage1 embedding.",
                lambda: plots.attention_heatmap(
                    attention, att_dates, att_symbols, target, plot_dir / f"attention_{safe}.png"
                ),
            )
    else:
        sections.append(note("Skipped: attention.npz not found (Stage1 attention not saved)."))

    # --- variable importance
    sections.append("<h2>Variable importance</h2>")
    importance = folder.read_json("importance.json") if folder.has("importance.json") else {}
    if not importance:
        sections.append(note("Skipped: importance.json not found (no TFT in this run)."))
    for name, weights in importance.items():
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        draw(
            f"the importance of {name}",
            f"{name}: average variable-selection weight of each input over test windows.",
            lambda name=name, weights=weights, safe=safe: plots.variable_importance(
                weights, plot_dir / f"importance_{safe}.png", title=f"{name}: variable importance"
            ),
        )

    # --- predictions with intervals
    sections.append("<h2>Predictions with intervals</h2>")
    if predictions is None:
        sections.append(note("Skipped: predictions.parquet not found."))
    else:
        sections.append(_prediction_section(predictions, models, target, plot_dir, draw))

    # --- portfolios
    sections.append("<h2>Cumulative portfolio returns (test span, after costs)</h2>")
    bt = folder.load_table("backtest.parquet")
    if bt is not None:
        order = [m for m in models if m in set(bt["model"])]
        for strategy, caption in (
            (
                "topk",
                "Top-k dropout portfolio of each model vs the benchmark (dashed), "
                "compounded, net of trading costs.",
            ),
            (
                "long_short",
                "Long top 20% / short bottom 20% of each model (market-neutral, "
                "so no benchmark), compounded, net of trading costs.",
            ),
        ):
            if not (bt["strategy"] == strategy).any():
                sections.append(note(f"Skipped: no {strategy} rows in backtest.parquet."))
                continue
            series, bench = backtest_series(bt, strategy, order)
            draw(
                f"the {strategy} returns",
                caption,
                lambda s=series, b=bench, st=strategy: plots.cumulative_returns(
                    s,
                    plot_dir / f"cumulative_{st}.png",
                    benchmark=b,
                    title=f"Cumulative return: {_STRATEGY[st]} portfolio",
                ),
            )
    else:
        sections.append(note("Skipped: backtest.parquet not found."))

    # --- IC over time
    sections.append("<h2>Rank IC over time</h2>")
    if predictions is None:
        sections.append(note("Skipped: predictions.parquet not found."))
    else:
        have = set(predictions.models)
        daily = {}
        columns = ["date", "symbol", "model", "horizon", "pred", "label"]
        for m in [m for m in models if m in have] + sorted(have - set(models)):
            s = daily_ic_series(predictions.rows(m, 1, columns), m, horizon=1)
            if s.notna().any():  # a constant forecast (naive_zero) has no IC
                daily[m] = (s.index.to_numpy(), s.to_numpy())
        if daily:
            draw(
                "the IC over time",
                "Daily cross-sectional rank IC of each model at horizon 1, 20-date rolling "
                "mean; the legend gives the mean over the test span.",
                lambda: plots.ic_over_time(daily, plot_dir / "ic_over_time.png", rolling=20),
            )
        else:
            sections.append(note("Skipped: no model has a defined daily IC."))

    # --- training curves
    sections.append("<h2>Training curves</h2>")
    logs_dir = folder.file("logs")
    curves, log_notes = _read_logs(logs_dir) if logs_dir.is_dir() else ({}, [])
    sections += [note(n) for n in log_notes]
    if curves:
        draw(
            "the training curves",
            "Per stage: training and validation loss by epoch (left axis) and validation "
            "rank IC (right axis, dashed). Several lines = several fits (folds or seeds).",
            lambda: plots.training_curves(curves, plot_dir / "training_curves.png"),
        )
    else:
        sections.append(note("Skipped: no logs/<stage>/metrics.csv found."))

    # --- regime gate (relationships.regime)
    gates = _regime_gates(folder)
    if gates:
        sections.append("<h2>Regime gate</h2>")
        for name, scales in gates.items():
            frame = pd.DataFrame(scales).T[["index", "sector"]].astype(float)
            sections.append(f"<h3>{html.escape(name)}</h3>")
            table_id = "regime-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)
            sections.append(simple_table_html(frame, lambda v: f"x{v:.3f}", table_id))
        sections.append(
            '<p class="legend">Learned scale of the index relationship columns '
            "(attention_to_index, attention to the index) and of the sector column "
            "(attention_to_sector) in each regime of the index, applied at every window "
            "step by that step's regime; 1.0 = unchanged, range 0 to 2.</p>"
        )

    html_text = page_html(run_dir, metrics, models, config_text, health, sections)
    return folder.save_report(html_text)  # atomic, under a name of its own


def _prediction_section(predictions: PredictionFile, models, target, plot_dir, draw) -> str:
    """Pick a model (with quantiles if any, hybrid first) and a stock; draw its bands."""
    sections: list[str] = []
    qcols = predictions.quantile_columns()
    horizon = min(predictions.horizons)
    at_h = [m for m, hs in predictions.by_model.items() if horizon in hs]  # file order
    with_q = [
        m for m in at_h if qcols and predictions.rows(m, horizon, qcols).notna().all(axis=1).any()
    ]
    if with_q:
        model = sorted(with_q, key=lambda m: not m.startswith("hybrid"))[0]
    else:
        ranked = [
            m
            for m in models
            if m in set(at_h) and not m.startswith(("control_", "naive_")) and m not in FACTORS
        ]
        ranked.sort(
            key=lambda m: -np.nan_to_num(metric_value(models[m], ("rank_ic",)), nan=-np.inf)
        )
        if not ranked:
            return note("Skipped: no model predictions to show.")
        model = ranked[0]
    # that model's rows at that horizon only, in the columns the band reads
    sub = predictions.rows(
        model, horizon, ["date", "symbol", "model", "horizon", "pred", "label", *qcols]
    )
    symbols = sub["symbol"].astype(str)
    symbol = target if target in set(symbols) else symbols.value_counts().index[0]
    # labels (and point scores) z-scored across stocks per date: the scale models train on
    one = prediction_band(sub, model, symbol, horizon)
    band = one.band_label if one.has_interval else ""
    caption = (
        f"{model}: horizon-{horizon} forecast for {symbol} on the test span vs the "
        "realised return, both as z-scores across stocks at each date"
    )
    caption += f", with the {band}." if with_q else " (this run has no quantile forecasts)."
    if not with_q:
        sections.append(note("No quantile columns in predictions.parquet: no interval band."))
    draw(
        "the prediction bands",
        caption,
        lambda: plots.prediction_bands(
            one.dates,
            one.label,
            one.pred,
            one.lo,
            one.hi,
            f"{model}: {symbol}, horizon {horizon} (z-scores across stocks)",
            plot_dir / "prediction_bands.png",
            band_label=one.band_label,
        ),
    )
    return "\n".join(sections)
