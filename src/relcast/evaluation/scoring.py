"""Score forecasts on the test span: ``score(predictions, labels, mask, split, settings)``.

Pure functions over arrays: nothing here trains, reads or writes a file. The pipeline gathers
every model's forecast (:mod:`relcast.run.steps.evaluate`) and calls :func:`score`; the tests call
it on planted arrays.

Rows of ``metrics["models"]`` (one per entry of ``predictions``, in its order):
``ic, rank_ic, icir, rank_icir, mse, direction_acc`` (:func:`~relcast.metrics.
signal_metrics`), ``rank_ic_by_horizon``, Newey-West ``ic_t, ic_p, rank_ic_t, rank_ic_p``,
paired tests ``vs_lightgbm`` / ``vs_own`` (:mod:`relcast.evaluation.stats`), ``pinball``,
``coverage``, ``coverage_nominal`` for quantile forecasts, ``backtest`` (top-k dropout and
long-short), and ``seeds`` when a model has several seeds.

Units: every model is scored against the horizon-1 label. IC / rank IC are scale-free. MSE
and direction accuracy use cross-sectionally z-scored labels (what Stage1/Stage3 are trained
on): MSE 1.0 is "no information", direction = above / below the date's cross-section mean.
Portfolios trade on the score of each model with the raw forward returns (docs/formulas.md).
A model named ``naive_zero`` (a constant) has no direction, horizon table or backtest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from relcast.evaluation.backtest import (
    TradingCosts,
    long_short_backtest,
    topk_dropout_backtest,
)
from relcast.evaluation.stats import newey_west_lag, newey_west_test, paired_test, seed_mean_std
from relcast.metrics import (
    daily_ic,
    daily_rank_ic,
    interval_coverage,
    pinball_loss,
    signal_metrics,
)

STAT_KEYS = ("ic_t", "ic_p", "rank_ic_t", "rank_ic_p")
CONSTANT = "naive_zero"  # the one forecast without a direction or a backtest


@dataclass(frozen=True)
class ScoreSettings:
    """How to score: portfolio settings (config ``evaluation:``), quantile levels of the
    quantile forecasts (``stage3.quantiles``) and the label delay (``data.label_delay``)."""

    topk: int = 5
    n_drop: int = 1
    buy_cost: float = 0.0005
    sell_cost: float = 0.0015
    periods_per_year: int = 252
    quantiles: tuple[float, ...] | None = (0.1, 0.5, 0.9)
    label_delay: int = 0

    @classmethod
    def from_config(cls, config) -> ScoreSettings:
        ev = config.evaluation
        q = config.stage3.quantiles
        return cls(
            topk=ev.topk,
            n_drop=ev.n_drop,
            buy_cost=ev.buy_cost,
            sell_cost=ev.sell_cost,
            periods_per_year=ev.periods_per_year,
            quantiles=tuple(q) if q is not None else None,
            label_delay=config.data.label_delay,
        )


@dataclass(frozen=True)
class ScoredSpan:
    """What every model is scored on: the test dates with a label and the z-scored labels.

    Arrays cover the dates ``start .. start + T - 1`` of the split (all of them when
    ``start`` is 0 and ``T`` the split's length); ``days`` index into them."""

    days: np.ndarray  # (D,) test date indices with at least one finite horizon-1 label
    z: np.ndarray  # (T, N, H) labels z-scored across the stocks of ``mask`` at each date
    mask: np.ndarray  # (T, N) stocks scored
    start: int = 0  # the split's index of the arrays' first date


def scoring_window(split) -> slice:
    """The dates scoring reads: first to last test date. Forecasts, labels and masks cut to
    this window (``[W, N, ...]``, :func:`score`'s ``start=window.start``) score exactly as
    over every date, since every metric, table and backtest reads test dates only."""
    return slice(int(np.min(split.test)), int(np.max(split.test)) + 1)


def scored_span(labels: np.ndarray, mask: np.ndarray, split, start: int = 0) -> ScoredSpan:
    """The test dates to score; a test date inside train/valid is an error (broken split).

    ``labels [T, N, H]`` and ``mask [T, N]`` cover the split's dates ``start .. start+T-1``
    (e.g. :func:`scoring_window`); every test date must lie inside them."""
    from relcast.features.labels import normalize_labels_cross_section

    T = labels.shape[0]
    leak = np.intersect1d(split.test, np.concatenate([split.train, split.valid]))
    if leak.size:
        raise RuntimeError(f"{leak.size} test dates also in train/valid: the split is broken")
    inside = np.asarray(split.test) - start
    if inside.size and (inside.min() < 0 or inside.max() >= T):
        raise ValueError(
            f"test dates {int(np.min(split.test))}..{int(np.max(split.test))} are not all "
            f"inside the arrays' dates {start}..{start + T - 1}"
        )
    test = np.zeros(T, dtype=bool)
    test[inside] = True
    has_label = np.isfinite(labels[..., 0]).any(axis=1)
    z = normalize_labels_cross_section(labels, mask)  # (T, N, H)
    return ScoredSpan(days=np.flatnonzero(test & has_label), z=z, mask=mask, start=start)


def benchmark_returns(ret1: np.ndarray, mask: np.ndarray, is_index: np.ndarray) -> np.ndarray:
    """``[T]`` 1-step forward return of the first index, else the equal-weight stock mean."""
    idx = np.flatnonzero(is_index)
    if idx.size:
        return ret1[:, idx[0]]
    stocks = np.where(mask, ret1, np.nan)
    with np.errstate(all="ignore"):
        return np.nanmean(stocks, axis=1)


def split_dates(split) -> dict:
    """``{"train": [first, last], "valid": .., "test": .., "embargo": int}`` (ISO dates)."""
    out: dict[str, Any] = {
        name: [str(split.dates[idx[0]])[:10], str(split.dates[idx[-1]])[:10]]
        for name, idx in (("train", split.train), ("valid", split.valid), ("test", split.test))
    }
    return {**out, "embargo": int(split.embargo)}


def score(
    predictions: dict[str, np.ndarray],
    labels: np.ndarray,
    mask: np.ndarray,
    split,
    settings: ScoreSettings = ScoreSettings(),
    *,
    quantiles: dict[str, np.ndarray] | None = None,
    seed_runs: dict[str, list[np.ndarray]] | None = None,
    benchmark: np.ndarray | None = None,
    start: int = 0,
) -> dict[str, Any]:
    """Metrics of every forecast on the test span of ``split`` (metrics.json's content).

    Every array covers the same dates: the split's ``start .. start + T - 1`` (all of them by
    default; :func:`scoring_window` is all that is read, and gives the same metrics).

    Args:
        predictions: model name -> point forecast ``[T, N, H]``.
        labels: raw forward returns ``[T, N, H]`` (NaN where unknown).
        mask: ``[T, N]`` the cells scored (stocks with features; indices excluded).
        split: ``train, valid, test`` date indices, ``embargo`` and ``dates [T]``.
        settings: portfolio, quantile and label settings.
        quantiles: model name -> ``[T, N, H, Q]`` quantile forecasts (levels in settings).
        seed_runs: model name -> the forecasts of each seed (the first one is in
            ``predictions``): the row's metrics become means over seeds.
        benchmark: ``[T]`` benchmark return of the top-k portfolio (default: equal-weight
            mean of the horizon-1 labels over ``mask``).
        start: the split's index of the arrays' first date.
    """
    span = scored_span(labels, mask, split, start)
    days, z, cell = span.days, span.z, span.mask
    H = labels.shape[2]
    quantiles, seed_runs = quantiles or {}, seed_runs or {}
    if benchmark is None:
        benchmark = benchmark_returns(labels[..., 0], mask, np.zeros(mask.shape[1], bool))
    lag = newey_west_lag(1)  # every model is scored against the horizon-1 label
    z1, cell_d = z[days, :, 0], cell[days]

    # Newey-West t of each model's daily IC / Rank IC; paired tests of daily Rank IC against
    # lightgbm and stage3_own_<model>, on the seed-averaged forecasts where there are seeds
    ic_stats, series = {}, {}
    for name, pred in predictions.items():
        ic_stats[name], series[name] = ic_statistics(pred[days, :, 0], z1, cell_d, lag)
    seed_rows, seed_average = {}, {}
    for name, runs in seed_runs.items():
        if len(runs) < 2:
            continue
        seed_rows[name] = [
            {**signal_metrics(r[days, :, 0], z1, cell_d), **ic_statistics(r[days, :, 0], z1,
                                                                          cell_d, lag)[0]}
            for r in runs
        ]  # fmt: skip
        avg = np.mean([r[days, :, 0] for r in runs], axis=0)  # (D, N) seed-mean forecast
        avg_stats, series[name] = ic_statistics(avg, z1, cell_d, lag)
        sm_avg = signal_metrics(avg, z1, cell_d)
        seed_average[name] = {"ic": sm_avg["ic"], "rank_ic": sm_avg["rank_ic"], **avg_stats}

    rows: dict[str, dict] = {}
    for name, pred in predictions.items():
        sm = signal_metrics(pred[days, :, 0], z1, cell_d)
        by_h = {}
        if name != CONSTANT:
            by_h = {
                f"h{h + 1}": signal_metrics(pred[days, :, h], z[days, :, h], cell_d)["rank_ic"]
                for h in range(H)
            }
        else:
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
                "average": seed_average[name],
            }
        sm.update(paired_rows(name, series, lag, seeded=name in seed_average))
        row: dict[str, Any] = {**sm, "rank_ic_by_horizon": by_h}
        if name in quantiles and settings.quantiles is not None:
            row.update(interval_metrics(quantiles[name][days], z[days], cell_d, settings.quantiles))
        if name != CONSTANT:
            row["backtest"] = backtests(pred[..., 0], labels[..., 0], cell, days, benchmark,
                                        settings)[0]  # fmt: skip
        rows[name] = row

    return {
        "split": split_dates(split),
        "labels": {
            "horizons": H,
            "delay": settings.label_delay,
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


def ic_statistics(
    score: np.ndarray, z: np.ndarray, cell: np.ndarray, lag: int
) -> tuple[dict[str, float], np.ndarray]:
    """Newey-West t and p of the daily IC and Rank IC of ``score [D, N]`` (STAT_KEYS), and the
    daily Rank IC series ``[D]`` that the paired tests compare."""
    rank_ic = daily_rank_ic(score, z, cell)
    ic_test = newey_west_test(daily_ic(score, z, cell), lag)
    rank_test = newey_west_test(rank_ic, lag)
    values = (ic_test["t"], ic_test["p"], rank_test["t"], rank_test["p"])
    return dict(zip(STAT_KEYS, values, strict=True)), rank_ic


def paired_rows(name: str, series: dict[str, np.ndarray], lag: int, seeded: bool) -> dict:
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


def interval_metrics(
    pq: np.ndarray, z: np.ndarray, cell: np.ndarray, levels, block_cells: int = 2**22
) -> dict:
    """Pinball loss and coverage of quantile forecasts ``pq [D, N, H, Q]`` against the
    z-scored labels ``z [D, N, H]`` on ``cell [D, N]`` (outer quantiles = the interval):
    :func:`pinball_loss` and :func:`interval_coverage` of the cells where all are finite,
    summed a block of dates at a time (float64 temporaries of a block, not of every cell)."""
    q = np.asarray(levels, dtype=np.float64)
    loss = inside = count = 0.0
    step = max(1, block_cells // max(1, z[0].size))
    for a in range(0, len(pq), step):
        p, y = pq[a : a + step], z[a : a + step]
        ok = cell[a : a + step, :, None] & np.isfinite(p).all(-1) & np.isfinite(y)
        p, y = p[ok], y[ok]  # (cells, Q), (cells,)
        if len(y):  # the block's means, weighted by its cells
            loss += pinball_loss(p, y, q) * len(y) * len(q)
            inside += interval_coverage(p[:, 0], p[:, -1], y) * len(y)
            count += len(y)
    nan = float("nan")
    return {
        "pinball": loss / (count * len(q)) if count else nan,
        "coverage": inside / count if count else nan,
        "coverage_nominal": float(q[-1] - q[0]),
    }


def backtests(score, ret1, cell, days, benchmark, settings: ScoreSettings):
    """Top-k dropout and long-short portfolios on ``score [T, N]`` over ``days``:
    ``({"topk": {...}, "long_short": {...}}, (topk result, long-short result))``."""
    s = np.where(cell, score, np.nan)[days]
    r = np.where(cell, ret1, np.nan)[days]
    m = cell[days] & np.isfinite(s)
    topk = min(settings.topk, max(1, int(m.sum(axis=1).min()) // 2))
    costs = TradingCosts(settings.buy_cost, settings.sell_cost)
    tk = topk_dropout_backtest(
        s, r, m, topk=topk, n_drop=min(settings.n_drop, topk), costs=costs,
        benchmark=benchmark[days], periods_per_year=settings.periods_per_year,
    )  # fmt: skip
    ls = long_short_backtest(
        s, r, m, quantile=0.2, costs=costs, periods_per_year=settings.periods_per_year
    )
    return {"topk": {"k": topk, **tk.metrics}, "long_short": ls.metrics}, (tk, ls)
