"""The pipeline's evaluate step: gather every model's forecast, score them, save the results.

1. Forecasts ``[T, N, H]`` of every model of the run: the baselines
   (:mod:`relcast.training.baselines`), Stage1, Stage1+Stage2, every Stage3 model (and its
   seeds), in the order of metrics.json's rows.
2. :func:`relcast.evaluation.scoring.score` turns them into metrics (pure, over arrays).
3. The run folder (:class:`relcast.runfolder.RunFolder`) saves metrics.json,
   predictions.parquet, backtest.parquet, importance.json and attention.npz.

Rows of ``metrics.json["models"]``: ``naive_zero``, ``naive_momentum``, ``lightgbm``,
``control_shuffled_lightgbm`` (LightGBM on labels shuffled within each date: its IC must be
near zero), ``stage1``, ``stage1+stage2``, ``hybrid_<model>``, ``stage3_own_<model>``,
``stage3_rawconcat_<model>``. Stage3 rows also carry ``seconds_per_epoch``,
``windows_per_second`` and ``num_inputs`` from run.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from relcast.evaluation.frames import backtest_table, prediction_table
from relcast.evaluation.scoring import (
    CONSTANT,
    ScoreSettings,
    benchmark_returns,
    score,
    scored_span,
)

TIMINGS = ("seconds_per_epoch", "windows_per_second", "num_inputs")


@dataclass
class Forecasts:
    """Every model's forecasts on the run's dates, ready for :func:`score`."""

    point: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (T, N, H)
    quantiles: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (T, N, H, Q)
    seed_runs: dict[str, list[np.ndarray]] = field(default_factory=dict)  # name -> seeds
    importance: dict[str, dict[str, float]] = field(default_factory=dict)  # TFT models
    extra: dict[str, dict] = field(default_factory=dict)  # name -> timings from run.json


def gather_forecasts(pipe, cell: np.ndarray, z1: np.ndarray) -> Forecasts:
    """Forecasts of the baselines, Stage1, Stage1+Stage2 and every saved Stage3 model."""
    from relcast.training.baselines import baseline_predictions
    from relcast.training.stage3 import predict_stage3

    cfg, f, split = pipe.config, pipe.features, pipe.split
    H = pipe.labels.shape[2]
    out = Forecasts()
    out.point.update(
        baseline_predictions(pipe.panel, f, z1, cell, split, H, cfg.trainer.seed, cfg.baselines)
    )
    s1 = _stage1_outputs(pipe, booster=cfg.stage2.enabled)
    # Stage1 predicts stage1.horizons (default 1); later horizons repeat its last one, as
    # LightGBM's single forecast is repeated
    pad = ((0, 0), (0, 0), (0, H - s1["pred"].shape[2]))
    out.point["stage1"] = np.pad(s1["pred"], pad, mode="edge")
    booster = pipe.stage2_booster
    if booster is not None and cfg.stage2.enabled:
        raw = np.nan_to_num(f.values)
        corrected = booster.predict(raw, s1["embeddings"], s1["pred"][..., 0], f.mask)
        s12 = out.point["stage1"].copy()
        s12[..., 0] = corrected  # Stage2 corrects horizon 1, the horizon it was fitted on
        out.point["stage1+stage2"] = s12

    trained = pipe.folder.run_info()["steps"].get("stage3", {}).get("models", {})
    for name, model_name, feature_set in pipe.stage3_names():
        if not pipe.folder.has(f"stage3/{name}/model.safetensors"):
            continue
        model = pipe.stage3_model(name)
        inputs = pipe.stage3_inputs(feature_set)
        pred = predict_stage3(model, inputs, index=split.test)
        out.point[name] = pred["point"]
        if model.config.quantiles is not None:
            out.quantiles[name] = pred["pred"]
        if model_name == "tft":
            out.importance[name] = _tft_importance(model, inputs, split.test)
        out.extra[name] = {k: v for k, v in trained.get(name, {}).items() if k in TIMINGS}
        runs = [pred["point"]]  # --seeds K: every Stage3 model is trained K times
        for folder in pipe.seed_folders(name)[1:]:
            if pipe.folder.has(f"stage3/{folder}/model.safetensors"):
                seeded = predict_stage3(pipe.stage3_model(folder), inputs, index=split.test)
                runs.append(seeded["point"])
        if len(runs) > 1:
            out.seed_runs[name] = runs
    return out


def evaluate_run(pipe) -> dict[str, Any]:
    """Score every model of the run (a :class:`relcast.pipeline.Pipeline`) on the test span;
    save metrics, predictions, backtests, importance and attention; return the metrics."""
    cfg, panel, split = pipe.config, pipe.panel, pipe.split
    labels = pipe.labels  # (T, N, H) raw forward returns
    cell = pipe.features.mask & pipe.target[None, :]  # (T, N) stocks, indices excluded
    span = scored_span(labels, cell, split)
    forecasts = gather_forecasts(pipe, cell, span.z[..., 0])
    settings = ScoreSettings.from_config(cfg)
    benchmark = benchmark_returns(labels[..., 0], panel.mask, panel.is_index)
    metrics = score(
        forecasts.point, labels, cell, split, settings,
        quantiles=forecasts.quantiles, seed_runs=forecasts.seed_runs, benchmark=benchmark,
    )  # fmt: skip
    for name, extra in forecasts.extra.items():
        metrics["models"][name].update(extra)

    levels = settings.quantiles
    predictions = pd.concat(
        [
            prediction_table(
                name,
                pred,
                forecasts.quantiles.get(name),
                labels,
                span,
                panel.dates,
                panel.symbols,
                levels,
            )  # fmt: skip
            for name, pred in forecasts.point.items()
        ],
        ignore_index=True,
    )
    backtest = pd.concat(
        [
            backtest_table(name, pred, labels, span, benchmark, panel.dates, settings)
            for name, pred in forecasts.point.items()
            if name != CONSTANT
        ],
        ignore_index=True,
    )
    folder = pipe.folder
    folder.save_metrics(metrics)
    folder.save_table("predictions.parquet", predictions)
    folder.save_table("backtest.parquet", backtest)
    if forecasts.importance:
        folder.write_json("importance.json", forecasts.importance)
    _save_attention(pipe, span.days)
    return metrics


def _tft_importance(model, inputs, index) -> dict[str, float]:
    loader = inputs.loader(model.config.lookback, index=index, batch_size=2048)
    result = model.interpret(iter(loader), feature_names=inputs.names)
    return {k: float(v) for k, v in result["variable_importance"].items()}


MEMMAP_ATTENTION_BYTES = 2**28  # data.store: memmap saves the last scored days within this


def _stage1_outputs(pipe, booster: bool) -> dict[str, np.ndarray]:
    """Stage1's outputs for every date; for a memory-mapped run without Stage2, only ``pred``
    (the embeddings of every date are ``T x N x d_model`` floats, which only Stage2 reads)."""
    if pipe.config.data.store != "memmap" or booster:
        return pipe.stage1_outputs()
    from relcast.training.stage1 import predict_stage1

    out = predict_stage1(pipe.stage1_model, pipe.features, outputs=("pred",))
    return {"pred": out["pred"]}  # (T, N, H1)


def _save_attention(pipe, days: np.ndarray) -> None:
    from relcast.training.stage1 import predict_stage1

    if pipe.config.data.store == "memmap":  # [D, N, N] floats: the last days that fit
        N = pipe.panel.num_symbols
        days = days[-max(1, MEMMAP_ATTENTION_BYTES // (4 * N * N)) :]
    out = predict_stage1(
        pipe.stage1_model, pipe.features, dates_index=days, need_weights=True,
        average_heads=True, last_layer=True,
    )  # fmt: skip
    attention = out["attention"][:, 0]  # (D, N, N): last layer, head-averaged
    pipe.folder.save_attention(pipe.panel.dates[days], pipe.panel.symbols, attention)
