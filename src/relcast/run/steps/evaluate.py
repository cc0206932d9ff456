"""evaluate: gather every model's forecast, score them, save the results (rank 0).

1. Forecasts ``[W, N, H]`` of every model of the run over the scoring window (first to last
   test date, :func:`relcast.evaluation.scoring.scoring_window`: all that scoring, the
   tables and the backtests read): the baselines (:mod:`relcast.training.baselines`),
   Stage1, Stage1+Stage2, every Stage3 model (and its seeds), in the order of metrics.json's
   rows. No model's forecast of every date ``[T, N, H]`` is built (with ``data.store:
   memmap``, Stage1 runs on the window's dates only), so memory grows with the test span.
2. :func:`relcast.evaluation.scoring.score` turns them into metrics (pure, over arrays).
3. The run folder (:class:`relcast.runfolder.RunFolder`) saves metrics.json,
   predictions.parquet (written piece by piece), backtest.parquet, importance.json and
   attention.npz.

Rows of ``metrics.json["models"]``: ``naive_zero``, the factor baselines (``reversal_1d``,
``reversal_5d``, ``momentum_20d``, ``low_volatility_20d``, ``liquidity_20d``), ``lightgbm``,
``control_shuffled_lightgbm`` (LightGBM on labels shuffled within each date: its IC must be
near zero), ``stage1``, ``stage1+stage2``, ``hybrid_<model>``, ``stage3_own_<model>``,
``stage3_rawconcat_<model>`` (with ``--seeds K``: the mean forecast of the K seeds, also in
predictions.parquet and backtest.parquet). Stage3 rows also carry ``seconds_per_epoch``,
``windows_per_second`` and ``num_inputs`` from run.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from relcast.evaluation.frames import (
    PredictionRows,
    backtest_table,
    prediction_columns,
    prediction_frames,
    write_frames,
)
from relcast.evaluation.scoring import (
    CONSTANT,
    ScoreSettings,
    Spread,
    benchmark_returns,
    score,
    scored_span,
    scoring_window,
    seed_ensemble,
)
from relcast.run.context import RunContext, writes

TIMINGS = ("seconds_per_epoch", "windows_per_second", "num_inputs")
BLOCK_CELLS = 2**22  # (date, stock) cells z-scored at a time


@dataclass
class Forecasts:
    """Every model's forecasts on the window's dates ``[W, ...]``, ready for :func:`score`."""

    point: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (W, N, H)
    quantiles: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (W, N, H, Q)
    seed_runs: dict[str, list[np.ndarray]] = field(default_factory=dict)  # name -> seeds
    importance: dict[str, dict[str, float]] = field(default_factory=dict)  # TFT models
    extra: dict[str, dict] = field(default_factory=dict)  # name -> timings from run.json
    window: slice = field(default_factory=lambda: slice(None))  # the dates the arrays cover


def gather_forecasts(ctx: RunContext, cell: np.ndarray, window: slice | None = None) -> Forecasts:
    """Forecasts of the baselines, Stage1, Stage1+Stage2 and every saved Stage3 model over
    ``window`` (default: :func:`scoring_window` of the run's split); ``cell [T, N]``: the
    stocks scored on every date."""
    from relcast.training.baselines import LightgbmFit, baseline_predictions
    from relcast.training.stage3 import predict_stage3

    cfg, f, split = ctx.config, ctx.features, ctx.split
    window = scoring_window(split) if window is None else window
    H = ctx.labels.shape[2]
    out = Forecasts(window=window)
    # LightGBM is fitted on the horizon-1 z-scores of the training and validation dates:
    # those up to the last of them are all it reads (and its shuffled control draws them)
    fitted = int(max(np.max(split.train), np.max(split.valid))) + 1
    z1 = zscored_h1(ctx.labels[:fitted], cell[:fitted])  # (fitted, N)
    out.point.update(
        baseline_predictions(
            ctx.panel,
            f,
            LightgbmFit(z1, cell, split, cfg.trainer.seed),
            H,
            cfg.baselines,
            dates=window,
        )  # fmt: skip
    )
    del z1
    booster = ctx.stage2_booster if cfg.stage2.enabled else None
    s1 = stage1_window_outputs(ctx, window, booster=booster is not None)
    # Stage1 predicts stage1.horizons (default 1); later horizons repeat its last one, as
    # LightGBM's single forecast is repeated
    pad = ((0, 0), (0, 0), (0, H - s1["pred"].shape[2]))
    out.point["stage1"] = np.pad(s1["pred"], pad, mode="edge")
    if booster is not None:  # row by row: the window's rows give the same values
        raw = np.nan_to_num(f.values[window])
        mask = np.asarray(f.mask[window])
        corrected = booster.predict(raw, s1["embeddings"], s1["pred"][..., 0], mask)
        s12 = out.point["stage1"].copy()
        s12[..., 0] = corrected  # Stage2 corrects horizon 1, the horizon it was fitted on
        out.point["stage1+stage2"] = s12
    del s1

    trained = ctx.info()["steps"].get("stage3", {}).get("models", {})
    for name, model_name, feature_set in ctx.stage3_names():
        if not ctx.has_stage3(name):
            continue
        model, spec = ctx.stage3_model(name)
        inputs = ctx.stage3_inputs(feature_set)
        pred = predict_stage3(
            model, inputs, index=split.test, span=window, chunk_length=spec.chunk_length
        )
        out.point[name] = pred["point"]
        if model.config.quantiles is not None:
            out.quantiles[name] = pred["pred"]
        if model_name == "tft":
            out.importance[name] = tft_importance(model, inputs, split.test)
        out.extra[name] = {k: v for k, v in trained.get(name, {}).items() if k in TIMINGS}
        runs = [pred["point"]]  # --seeds K: every Stage3 model is trained K times
        for folder in ctx.seed_folders(name)[1:]:
            if ctx.has_stage3(folder):
                seeded_model, seeded_spec = ctx.stage3_model(folder)
                seeded = predict_stage3(
                    seeded_model, inputs, index=split.test, span=window,
                    chunk_length=seeded_spec.chunk_length,
                )  # fmt: skip
                runs.append(seeded["point"])
                if name in out.quantiles:  # summed here, averaged below
                    out.quantiles[name] = out.quantiles[name] + seeded["pred"]
        if len(runs) > 1:  # the reported forecast is the seeds' ensemble (their mean)
            out.seed_runs[name] = runs
            out.point[name] = seed_ensemble(runs)
            if name in out.quantiles:
                out.quantiles[name] /= len(runs)
    return out


def zscored_h1(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``float32 [T, N]``: horizon-1 labels z-scored across the stocks of ``mask`` at each
    date (:func:`relcast.features.labels.normalize_labels_cross_section`), a block of dates at a
    time (it is per date: the same values, without its float64 ``[T, N, H]`` temporaries)."""
    from relcast.features.labels import normalize_labels_cross_section

    T, N = mask.shape
    out = np.empty((T, N), dtype=np.float32)
    step = max(1, BLOCK_CELLS // max(1, N))
    for a in range(0, T, step):
        block = np.asarray(labels[a : a + step, :, :1])
        out[a : a + step] = normalize_labels_cross_section(block, mask[a : a + step])[..., 0]
    return out


@writes("evaluate")
def evaluate(ctx: RunContext) -> dict[str, Any]:
    """Score every model of the run on the test span; save metrics, predictions,
    backtests, importance and attention; return the metrics."""
    start = time.perf_counter()
    metrics = evaluate_run(ctx)
    ctx.mark("evaluate", time.perf_counter() - start)
    return metrics


def evaluate_run(ctx: RunContext) -> dict[str, Any]:
    """:func:`evaluate`'s work, without the lock and the mark in ``run.json``."""
    cell = ctx.features.mask & ctx.target[None, :]  # (T, N) stocks, indices excluded
    window = scoring_window(ctx.split)
    forecasts = gather_forecasts(ctx, cell, window)
    metrics, days = score_and_save(ctx, forecasts, ctx.split, ctx.folder)
    del forecasts  # before Stage1's attention pass
    save_attention(ctx, days)
    return metrics


def score_and_save(ctx: RunContext, forecasts: Forecasts, split, folder) -> tuple[dict, np.ndarray]:
    """Score ``forecasts`` (over ``forecasts.window``) on ``split``'s test dates with the
    run's labels and cells, and save metrics.json, predictions.parquet, backtest.parquet and
    importance.json through ``folder`` (the run's, or a walk-forward's pooled one). Returns
    the metrics and the scored days (indices of the run's dates)."""
    cfg, panel, window = ctx.config, ctx.panel, forecasts.window
    cell = ctx.features.mask & ctx.target[None, :]  # (T, N) stocks, indices excluded
    # everything below reads the window's dates only: (W, ...) arrays, days within them
    labels_w, cell_w = np.asarray(ctx.labels[window]), cell[window]
    span = scored_span(labels_w, cell_w, split, window.start)
    settings = ScoreSettings.from_config(cfg)
    mask_w = np.asarray(panel.mask[window])
    benchmark = benchmark_returns(labels_w[..., 0], mask_w, panel.is_index)  # (W,)
    metrics = score(
        forecasts.point, labels_w, cell_w, split, settings,
        spread=Spread(forecasts.quantiles, forecasts.seed_runs), benchmark=benchmark,
        start=window.start,
    )  # fmt: skip
    for name, extra in forecasts.extra.items():
        metrics["models"][name].update(extra)

    levels = settings.quantiles
    dates, symbols = panel.dates[window], panel.symbols
    rows = PredictionRows(labels_w, span, dates, symbols, levels)
    pieces = (
        piece
        for name, pred in forecasts.point.items()
        for piece in prediction_frames(name, pred, forecasts.quantiles.get(name), rows)
    )
    columns = prediction_columns(levels if forecasts.quantiles else None)
    backtest = pd.concat(
        [
            backtest_table(name, pred, labels_w, span, benchmark, dates, settings)
            for name, pred in forecasts.point.items()
            if name != CONSTANT
        ],
        ignore_index=True,
    )
    folder.save_metrics(metrics)
    folder.write("predictions.parquet", partial(write_frames, frames=pieces, columns=columns))
    if forecasts.seed_runs:  # each seed's own forecast (a walk-forward pools their spread)
        seeds = (
            piece
            for name, runs in forecasts.seed_runs.items()
            for k, run in enumerate(runs)
            for piece in prediction_frames(f"{name}{SEED_MARK}{k}", run, None, rows)
        )
        folder.write(
            SEED_PREDICTIONS,
            partial(write_frames, frames=seeds, columns=prediction_columns(None)),
        )
    folder.save_table("backtest.parquet", backtest)
    if forecasts.importance:
        folder.write_json("importance.json", forecasts.importance)
    return metrics, span.days + window.start


SEED_PREDICTIONS = "seed_predictions.parquet"  # with evaluation.seeds > 1: model@seedK rows
SEED_MARK = "@seed"


def tft_importance(model, inputs, index) -> dict[str, float]:
    loader = inputs.loader(model.config.lookback, index=index, batch_size=2048)
    result = model.interpret(iter(loader), feature_names=inputs.names)
    return {k: float(v) for k, v in result["variable_importance"].items()}


# attention.npz holds the last scored days within this (every day up to ~4,000 dates at 30
# stocks; 16 days at 1,026 stocks, where all 250 of a year were 1 GB and a minute to compress)
ATTENTION_BYTES = 2**26
MEMMAP_ATTENTION_BATCH = 2**25  # data.store: memmap computes them with at most this much weights
STAGE1_BATCH = 64  # predict_stage1's default batch of dates


def stage1_window_outputs(ctx: RunContext, window: slice, booster: bool) -> dict[str, np.ndarray]:
    """Stage1's ``pred`` (and with ``booster`` its ``embeddings``) on the window's dates.

    A memory-mapped run runs Stage1 on those dates only (widened to whole batches of
    ``STAGE1_BATCH`` dates: the batches of a run over every date, so the same values); an
    in-memory run cuts the outputs it caches for every date."""
    keep = ("pred", "embeddings") if booster else ("pred",)
    if not ctx.store.by_blocks:
        full = ctx.stage1_outputs
        return {k: full[k][window] for k in keep}  # views of the run's cached outputs
    from relcast.models.cross_sectional import predict_stage1

    T = ctx.features.values.shape[0]
    first = window.start - window.start % STAGE1_BATCH
    last = min(T, -(-window.stop // STAGE1_BATCH) * STAGE1_BATCH)  # the batch's end
    out = predict_stage1(
        ctx.stage1_model, ctx.features, dates_index=np.arange(first, last),
        batch_dates=STAGE1_BATCH, outputs=keep,
    )  # fmt: skip
    return {k: out[k][window.start - first : window.stop - first] for k in keep}  # (W, N, ..)


def save_attention(ctx: RunContext, days: np.ndarray) -> None:
    from relcast.models.cross_sectional import predict_stage1

    batch = {}
    N = ctx.panel.num_symbols
    days = days[-max(1, ATTENTION_BYTES // (4 * N * N)) :]  # [D, N, N] floats: the last that fit
    if ctx.store.by_blocks:  # batches of dates whose every layer's and head's weights fit in this
        cfg = ctx.stage1_model.config
        per_date = 4 * cfg.num_layers * cfg.num_heads * N * N
        batch = {"batch_dates": max(1, min(STAGE1_BATCH, MEMMAP_ATTENTION_BATCH // per_date))}
    out = predict_stage1(
        ctx.stage1_model, ctx.features, dates_index=days, need_weights=True,
        average_heads=True, last_layer=True, **batch,
    )  # fmt: skip
    attention = out["attention"][:, 0]  # (D, N, N): last layer, head-averaged
    ctx.folder.save_attention(ctx.panel.dates[days], ctx.panel.symbols, attention)
