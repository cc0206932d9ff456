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

Statistics (:mod:`relcast.evaluation.stats`): every row has the Newey-West t and p of its
daily IC and Rank IC (``ic_t, ic_p, rank_ic_t, rank_ic_p``), ``vs_lightgbm`` and, for
hybrid_* / stage3_rawconcat_* rows, ``vs_own``: paired tests of its daily Rank IC against
``lightgbm`` / ``stage3_own_<model>`` (``mean_diff, se, t, p, n, lag``). With seeds, the row's
metrics are means over seeds (``seeds["<key>_std"]``), ``seeds["average"]`` scores the
seed-averaged forecast, and the paired tests compare seed-averaged forecasts.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from relcast.evaluation.backtest import long_short_backtest, topk_dropout_backtest
from relcast.evaluation.metrics import (
    daily_ic,
    daily_rank_ic,
    interval_coverage,
    pinball_loss,
    signal_metrics,
)
from relcast.evaluation.stats import newey_west_lag, newey_west_test, paired_test, seed_mean_std
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
    seed_average: dict[str, np.ndarray] = {}  # name -> (D, N) horizon-1 forecast, seed mean
    lag = newey_west_lag(1)  # every model is scored against the horizon-1 label
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
                {
                    **signal_metrics(r[days, :, 0], z[days, :, 0], cell[days]),
                    **_ic_statistics(r[days, :, 0], z[days, :, 0], cell[days], lag)[0],
                }
                for r in runs
            ]
            seed_average[name] = np.mean([r[days, :, 0] for r in runs], axis=0)

    # Newey-West t of each model's daily IC / Rank IC; paired tests of daily Rank IC against
    # lightgbm and stage3_own_<model>, on the seed-averaged forecasts where there are seeds
    ic_stats: dict[str, dict] = {}
    paired_series: dict[str, np.ndarray] = {}  # name -> (D,) daily Rank IC
    for name, score in scores.items():
        ic_stats[name], paired_series[name] = _ic_statistics(
            score[days, :, 0], z[days, :, 0], cell[days], lag
        )
    seed_average_rows: dict[str, dict] = {}
    for name, avg in seed_average.items():
        avg_stats, paired_series[name] = _ic_statistics(avg, z[days, :, 0], cell[days], lag)
        sm_avg = signal_metrics(avg, z[days, :, 0], cell[days])
        seed_average_rows[name] = {"ic": sm_avg["ic"], "rank_ic": sm_avg["rank_ic"], **avg_stats}

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
        sm.update(ic_stats[name])
        if name in seed_rows:
            per_seed = seed_rows[name]
            keys = ("ic", "rank_ic", "icir", "rank_icir", "mse", "direction_acc", *STAT_KEYS)
            means, stds = seed_mean_std(per_seed, keys)
            sm = {**sm, **means}
            sm["seeds"] = {
                "n": len(per_seed),
                **{f"{k}_std": v for k, v in stds.items()},
                "average": seed_average_rows[name],
            }
        sm.update(_paired_rows(name, paired_series, lag, seeded=name in seed_average))
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
        "statistics": {
            "newey_west_lag": lag,
            "lag_rule": "label horizon + 4",
            "kernel": "bartlett",
            "p_value": "two-sided, standard normal",
            "paired": "daily Rank IC minus the baseline's, on dates where both are defined",
        },
        "models": rows,
    }
    write_json(pipe.dir / "metrics.json", metrics)
    _write_parquet(pipe.dir / "predictions.parquet", pd.concat(frames, ignore_index=True))
    _write_parquet(pipe.dir / "backtest.parquet", pd.concat(bt_frames, ignore_index=True))
    if importance:
        write_json(pipe.dir / "importance.json", importance)
    _write_attention(pipe, days)
    return metrics


STAT_KEYS = ("ic_t", "ic_p", "rank_ic_t", "rank_ic_p")


def _ic_statistics(
    score: np.ndarray, z: np.ndarray, cell: np.ndarray, lag: int
) -> tuple[dict[str, float], np.ndarray]:
    """Newey-West t and p of the daily IC and Rank IC of ``score [D, N]`` (STAT_KEYS), and the
    daily Rank IC series ``[D]`` that the paired tests compare."""
    rank_ic = daily_rank_ic(score, z, cell)
    ic_test = newey_west_test(daily_ic(score, z, cell), lag)
    rank_test = newey_west_test(rank_ic, lag)
    values = (ic_test["t"], ic_test["p"], rank_test["t"], rank_test["p"])
    return dict(zip(STAT_KEYS, values, strict=True)), rank_ic


def _paired_rows(
    name: str, series: dict[str, np.ndarray], lag: int, seeded: bool
) -> dict[str, dict]:
    """``vs_lightgbm`` for every model but lightgbm; ``vs_own`` for hybrid_* and
    stage3_rawconcat_* rows (against stage3_own_<same model>)."""
    baselines = {"vs_lightgbm": "lightgbm"}
    for prefix in ("hybrid_", "stage3_rawconcat_"):
        if name.startswith(prefix):
            baselines["vs_own"] = "stage3_own_" + name.removeprefix(prefix)
    out = {}
    for key, base in baselines.items():
        if base == name or base not in series:
            continue
        out[key] = {"baseline": base, **paired_test(series[name], series[base], lag)}
        if seeded:  # Stage3 models (this one and stage3_own) compared by their seed means
            out[key]["forecasts"] = "seed_average"
    return out


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
