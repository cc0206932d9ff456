"""Evaluate every model of a run on the same test span, split and labels.

Rows of ``metrics.json["models"]``:

- ``naive_zero`` (predicts 0: the MSE reference; its IC is undefined), ``naive_momentum``
  (past 20-bar return), ``lightgbm`` (LightGBM on the raw features),
- ``stage1``, ``stage1+stage2``,
- ``hybrid_<model>``, ``stage3_own_<model>``, ``stage3_rawconcat_<model>`` (Stage3),
- ``control_shuffled_lightgbm``: LightGBM trained on labels shuffled across stocks within
  each date. Its IC must be near zero; if it is not, something leaks.

Units: every model is scored against the horizon-1 label. IC / rank IC are scale-free. MSE
and direction accuracy use cross-sectionally z-scored labels (what Stage1/Stage3 are trained
on): MSE 1.0 is "no information", direction = above / below the date's cross-section mean.
Portfolios trade on the score of each model with the raw forward returns (docs/formulas.md).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from relcast.evaluation.backtest import long_short_backtest, topk_dropout_backtest
from relcast.evaluation.metrics import interval_coverage, pinball_loss, signal_metrics
from relcast.persist import atomic_write_bytes, write_json

if TYPE_CHECKING:
    from relcast.pipeline import Pipeline


def lightgbm_scores(x: np.ndarray, y: np.ndarray, mask: np.ndarray, split, seed: int) -> np.ndarray:
    """LightGBM regression on raw features; scores for every date ``[T, N]``."""
    import lightgbm as lgb

    def rows(index):
        sub = np.zeros_like(mask)
        sub[index] = mask[index]
        sub &= np.isfinite(y)
        return np.nonzero(sub)

    tr, va = rows(split.train), rows(split.valid)
    params = dict(
        objective="regression",
        learning_rate=0.05,
        num_leaves=31,
        min_data_in_leaf=50,
        feature_fraction=0.8,
        bagging_fraction=0.8,
        bagging_freq=1,
        seed=seed,
        verbose=-1,
        num_threads=2,
    )
    booster = lgb.train(
        params,
        lgb.Dataset(x[tr], y[tr]),
        num_boost_round=500,
        valid_sets=[lgb.Dataset(x[va], y[va])],
        callbacks=[lgb.early_stopping(30, verbose=False)],
    )
    T, N, F = x.shape
    return booster.predict(x.reshape(T * N, F), num_iteration=booster.best_iteration).reshape(T, N)


def _shuffle_within_dates(y: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """Labels permuted across valid stocks within each date (vectorised: sort random keys)."""
    rng = np.random.default_rng(seed)
    valid = mask & np.isfinite(y)
    keys = np.where(valid, rng.random(y.shape), np.inf)
    order = np.argsort(keys, axis=1)  # valid cells first, in random order
    sorted_valid = np.argsort(np.where(valid, 0, 1), axis=1, kind="stable")
    out = np.full_like(y, np.nan)
    rows = np.arange(y.shape[0])[:, None]
    out[rows, sorted_valid] = y[rows, order]
    out[~valid] = np.nan
    return out


def _momentum(panel, window: int = 20) -> np.ndarray:
    from relcast.features.indicators import ffill

    close = ffill(np.where(panel.mask, panel.field("close"), np.nan))
    past = np.full_like(close, np.nan)
    past[window:] = close[window:] / close[:-window] - 1.0
    return past


def evaluate_run(pipe: Pipeline) -> dict[str, Any]:
    """Score every model of the run on the test span; write metrics, predictions, backtests."""
    from relcast.features import normalize_labels_cross_section

    cfg = pipe.config
    panel, f, split = pipe.panel, pipe.features, pipe.split
    labels = pipe.labels  # (T, N, H) raw forward returns
    T, N, H = labels.shape
    target = pipe.target
    cell = f.mask & target[None, :]  # (T, N) stocks with features, indices excluded
    z = normalize_labels_cross_section(labels, cell)  # (T, N, H)
    test = np.zeros(T, dtype=bool)
    test[split.test] = True
    # Proof the spans do not overlap: a test date inside train/valid is a hard error.
    leak = np.intersect1d(split.test, np.concatenate([split.train, split.valid]))
    if leak.size:
        raise RuntimeError(f"{leak.size} test dates also in train/valid: the split is broken")
    has_label = np.isfinite(labels[..., 0]).any(axis=1)
    days = np.flatnonzero(test & has_label)

    scores: dict[str, np.ndarray] = {}  # name -> (T, N, H) point scores
    quantiles: dict[str, np.ndarray] = {}  # name -> (T, N, H, Q)
    extra: dict[str, dict] = {}

    scores["naive_zero"] = np.zeros((T, N, H), dtype=np.float32)
    scores["naive_momentum"] = np.repeat(_momentum(panel)[..., None], H, axis=2)
    raw = np.nan_to_num(f.values)
    lgb_pred = lightgbm_scores(raw, z[..., 0], cell, split, cfg.trainer.seed)
    scores["lightgbm"] = np.repeat(lgb_pred[..., None], H, axis=2)
    shuffled = _shuffle_within_dates(z[..., 0], cell, cfg.trainer.seed + 1)
    ctrl = lightgbm_scores(raw, shuffled, cell, split, cfg.trainer.seed)
    scores["control_shuffled_lightgbm"] = np.repeat(ctrl[..., None], H, axis=2)

    s1 = pipe.stage1_outputs()
    # Stage1 predicts stage1.horizons (default 1); later horizons repeat its last one, as
    # LightGBM's single forecast is repeated
    pad = ((0, 0), (0, 0), (0, H - s1["pred"].shape[2]))
    scores["stage1"] = np.pad(s1["pred"], pad, mode="edge")
    booster = pipe.stage2_booster
    if booster is not None and cfg.stage2.enabled:
        corrected = booster.predict(raw, s1["embeddings"], s1["pred"][..., 0], f.mask)
        s12 = scores["stage1"].copy()
        s12[..., 0] = corrected  # Stage2 corrects horizon 1, the horizon it was fitted on
        scores["stage1+stage2"] = s12

    importance: dict[str, dict[str, float]] = {}
    for name, model_name, feature_set in pipe.stage3_names():
        if not (pipe.dir / "stage3" / name / "model.safetensors").exists():
            continue
        model = pipe.stage3_model(name)
        inputs = pipe.stage3_inputs(feature_set)
        from relcast.training.stage3 import predict_stage3

        out = predict_stage3(model, inputs, index=split.test)
        scores[name] = out["point"]
        if model.config.quantiles is not None:
            quantiles[name] = out["pred"]
        if model_name == "tft":
            importance[name] = _tft_importance(model, inputs, split.test)
        info = pipe._info()["steps"].get("stage3", {}).get("models", {}).get(name, {})
        extra[name] = {
            k: info[k]
            for k in ("seconds_per_epoch", "windows_per_second", "num_inputs")
            if k in info
        }

    # --seeds K: every Stage3 model is trained K times; the row reports mean and std
    seed_rows: dict[str, list[dict]] = {}
    for name, _, feature_set in pipe.stage3_names():
        if name not in scores:
            continue
        from relcast.training.stage3 import predict_stage3

        runs = [scores[name]]
        for folder in pipe.seed_folders(name)[1:]:
            if (pipe.dir / "stage3" / folder / "model.safetensors").exists():
                out = predict_stage3(
                    pipe.stage3_model(folder), pipe.stage3_inputs(feature_set), index=split.test
                )
                runs.append(out["point"])
        if len(runs) > 1:
            seed_rows[name] = [
                signal_metrics(r[days, :, 0], z[days, :, 0], cell[days]) for r in runs
            ]

    benchmark = _benchmark(panel, labels[..., 0])
    rows: dict[str, dict] = {}
    frames, bt_frames = [], []
    for name, score in scores.items():
        sm = signal_metrics(score[days, :, 0], z[days, :, 0], cell[days])
        by_h = (
            {
                f"h{h + 1}": signal_metrics(score[days, :, h], z[days, :, h], cell[days])["rank_ic"]
                for h in range(H)
            }
            if name not in ("naive_zero",)
            else {}
        )
        if name == "naive_zero":
            sm["direction_acc"] = float("nan")  # a zero forecast has no direction
        if name in seed_rows:
            per_seed = seed_rows[name]
            keys = ("ic", "rank_ic", "icir", "rank_icir", "mse", "direction_acc")
            sm = {**sm, **{k: float(np.mean([r[k] for r in per_seed])) for k in keys}}
            sm["seeds"] = {
                "n": len(per_seed),
                **{f"{k}_std": float(np.std([r[k] for r in per_seed], ddof=1)) for k in keys},
            }
        row: dict[str, Any] = {**sm, "rank_ic_by_horizon": by_h, **extra.get(name, {})}
        if name in quantiles:
            q = np.asarray(cfg.stage3.quantiles)
            pq = quantiles[name][days]  # (D, N, H, Q)
            ok = cell[days][..., None] & np.isfinite(pq).all(-1) & np.isfinite(z[days])
            row["pinball"] = float(pinball_loss(pq[ok], z[days][ok], q))
            row["coverage"] = float(interval_coverage(pq[ok][:, 0], pq[ok][:, -1], z[days][ok]))
            row["coverage_nominal"] = float(q[-1] - q[0])
        if name != "naive_zero":
            row["backtest"], bt = _backtests(
                name, score[..., 0], labels[..., 0], cell, days, benchmark, panel.dates, cfg
            )
            bt_frames.append(bt)
        rows[name] = row
        frames.append(
            _prediction_frame(
                name, score, quantiles.get(name), labels, z, cell, days, panel, cfg.stage3.quantiles
            )
        )

    metrics = {
        "split": read_split_dates(pipe),
        "labels": {
            "horizons": H,
            "delay": cfg.data.label_delay,
            "definition": "close[t+delay+h] / close[t+delay] - 1",
        },
        "test_dates_scored": int(len(days)),
        "models": rows,
    }
    write_json(pipe.dir / "metrics.json", metrics)
    _write_parquet(pipe.dir / "predictions.parquet", pd.concat(frames, ignore_index=True))
    _write_parquet(pipe.dir / "backtest.parquet", pd.concat(bt_frames, ignore_index=True))
    if importance:
        write_json(pipe.dir / "importance.json", importance)
    _write_attention(pipe, days)
    return metrics


def read_split_dates(pipe: Pipeline) -> dict:
    from relcast.persist import read_json

    s = read_json(pipe.dir / "split.json")
    return {**s["dates"], "embargo": s["embargo"]}


def _benchmark(panel, ret1: np.ndarray) -> np.ndarray:
    """Index 1-step forward return (the first index), else the equal-weight stock mean."""
    idx = np.flatnonzero(panel.is_index)
    if idx.size:
        return ret1[:, idx[0]]
    stocks = np.where(panel.mask, ret1, np.nan)
    with np.errstate(all="ignore"):
        return np.nanmean(stocks, axis=1)


def _backtests(name, score, ret1, cell, days, benchmark, dates, cfg) -> tuple[dict, pd.DataFrame]:
    ev = cfg.evaluation
    s = np.where(cell, score, np.nan)[days]
    r = np.where(cell, ret1, np.nan)[days]
    m = cell[days] & np.isfinite(s)
    topk = min(ev.topk, max(1, int(m.sum(axis=1).min()) // 2))
    tk = topk_dropout_backtest(
        s,
        r,
        m,
        topk=topk,
        n_drop=min(ev.n_drop, topk),
        buy_cost=ev.buy_cost,
        sell_cost=ev.sell_cost,
        benchmark=benchmark[days],
        periods_per_year=ev.periods_per_year,
    )
    ls = long_short_backtest(
        s,
        r,
        m,
        quantile=0.2,
        buy_cost=ev.buy_cost,
        sell_cost=ev.sell_cost,
        periods_per_year=ev.periods_per_year,
    )
    frame = pd.concat(
        [
            pd.DataFrame(
                {
                    "date": dates[days],
                    "model": name,
                    "strategy": "topk",
                    "daily_return": tk.daily_return,
                    "benchmark_return": benchmark[days],
                    "excess_return": tk.excess_return,
                    "turnover": tk.turnover,
                }
            ),
            pd.DataFrame(
                {
                    "date": dates[days],
                    "model": name,
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
    return {"topk": {"k": topk, **tk.metrics}, "long_short": ls.metrics}, frame


def _prediction_frame(
    name, score, q, labels, z, cell, days, panel, quantile_levels
) -> pd.DataFrame:
    """``label`` is the raw forward return; ``label_z`` its cross-sectional z-score, the unit
    Stage1/Stage3 forecasts and quantiles are in (compare bands with ``label_z``)."""
    T, N, H = score.shape
    t, n = np.nonzero(cell[days])
    t = days[t]
    parts = []
    for h in range(H):
        frame = pd.DataFrame(
            {
                "date": panel.dates[t],
                "symbol": panel.symbols[n],
                "model": name,
                "horizon": h + 1,
                "pred": score[t, n, h].astype(np.float32),
                "label": labels[t, n, h].astype(np.float32),
                "label_z": z[t, n, h].astype(np.float32),
            }
        )
        if q is not None:
            for k, level in enumerate(quantile_levels):
                frame[f"q{level:g}"] = q[t, n, h, k]
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def _tft_importance(model, inputs, index) -> dict[str, float]:
    loader = inputs.loader(model.config.lookback, index=index, batch_size=2048)
    result = model.interpret(iter(loader), feature_names=inputs.names)
    return {k: float(v) for k, v in result["variable_importance"].items()}


def _write_attention(pipe: Pipeline, days: np.ndarray) -> None:
    from relcast.training.stage1 import predict_stage1

    out = predict_stage1(
        pipe.stage1_model, pipe.features, dates_index=days, need_weights=True, average_heads=True
    )
    attention = out["attention"][:, -1]  # (D, N, N): last layer, head-averaged
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        dates=pipe.panel.dates[days].astype("int64"),
        symbols=pipe.panel.symbols.astype(str),
        attention=attention.astype(np.float32),
    )
    atomic_write_bytes(pipe.dir / "attention.npz", buf.getvalue())


def _write_parquet(path, frame: pd.DataFrame) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    atomic_write_bytes(path, buf.getvalue().to_pybytes())
