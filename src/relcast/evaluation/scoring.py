"""Score forecasts on the test span: ``score(predictions, labels, mask, split, settings)``.

Pure functions over arrays: nothing here trains, reads or writes a file. The pipeline gathers
every model's forecast (:mod:`relcast.run.steps.evaluate`) and calls :func:`score`; the tests
call it on planted arrays. Any span of test dates works: ``split.test`` names them (a
walk-forward run passes its pooled test blocks).

Rows of ``metrics["models"]`` (one per entry of ``predictions``, in its order):
``ic, rank_ic, icir, rank_icir, mse, direction_acc`` (:func:`~relcast.metrics.
signal_metrics`), ``rank_ic_by_horizon``, Newey-West ``ic_t, ic_p, rank_ic_t, rank_ic_p``,
paired tests ``vs_lightgbm`` / ``vs_reversal`` / ``vs_own`` (:mod:`relcast.evaluation.stats`:
Newey-West t, a block-bootstrap interval ``ci95`` and, for ``vs_own``, Clark-West),
``neutral`` (the same scores of the forecast's residual on the factor baselines,
:mod:`relcast.evaluation.neutral`), ``pinball``, ``coverage``, ``coverage_nominal`` for
quantile forecasts, ``backtest`` (top-k dropout and long-short), and ``seeds`` when a model
has several seeds: its row scores the seeds' ensemble (mean forecast), ``seeds`` the spread
of the single seeds. docs/statistics.md says which number answers which question.

Units: every model is scored against the horizon-1 label. IC / rank IC are scale-free. MSE
and direction accuracy use cross-sectionally z-scored labels (what Stage1/Stage3 are trained
on): MSE 1.0 is "no information", direction = above / below the date's cross-section mean.
Portfolios trade on the score of each model with the raw forward returns (docs/formulas.md).
A model named ``naive_zero`` (a constant) has no direction, horizon table or backtest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relcast.evaluation.backtest import (
    TradingCosts,
    long_short_backtest,
    topk_dropout_backtest,
)
from relcast.evaluation.neutral import neutralize
from relcast.evaluation.stats import (
    block_bootstrap_interval,
    clark_west_daily,
    clark_west_test,
    newey_west_lag,
    newey_west_test,
    paired_test,
    seed_mean_std,
)
from relcast.features.factors import FACTORS, enabled_factors
from relcast.metrics import (
    daily_ic,
    daily_rank_ic,
    interval_coverage,
    pinball_loss,
    signal_metrics,
)

STAT_KEYS = ("ic_t", "ic_p", "rank_ic_t", "rank_ic_p")
SEED_KEYS = ("ic", "rank_ic", "icir", "rank_icir", "mse", "direction_acc", *STAT_KEYS)
CONSTANT = "naive_zero"  # the one forecast without a direction or a backtest
REVERSAL = "reversal_1d"  # the one-line factor every model is compared with


@dataclass(frozen=True)
class ScoreSettings:
    """How to score: portfolio settings (config ``evaluation:``), quantile levels of the
    quantile forecasts (``stage3.quantiles``), the label delay (``data.label_delay``), the
    factor baselines the neutral scores regress on (``baselines:``, those switched on) and
    the bootstrap's draws and seed (``trainer.seed``)."""

    topk: int = 5
    n_drop: int = 1
    buy_cost: float = 0.0005
    sell_cost: float = 0.0015
    periods_per_year: int = 252
    quantiles: tuple[float, ...] | None = (0.1, 0.5, 0.9)
    label_delay: int = 0
    factors: tuple[str, ...] = tuple(FACTORS)  # the rows the neutral scores regress on
    bootstrap_draws: int = 2000  # block-bootstrap draws per paired difference
    bootstrap_seed: int = 0  # the same intervals on a rerun

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
            factors=tuple(enabled_factors(config.baselines)),
            bootstrap_seed=config.trainer.seed,
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


def seed_ensemble(runs: list[np.ndarray]) -> np.ndarray:
    """The seeds' ensemble: the mean of their forecasts (any shape, the first one's dtype)."""
    out = np.array(runs[0], copy=True)
    for r in runs[1:]:
        out += r
    out /= len(runs)
    return out


@dataclass(frozen=True)
class Spread:
    """What surrounds a model's point forecast: ``quantiles``, model name -> ``[T, N, H, Q]``
    quantile forecasts (levels in the settings); ``seed_runs``, model name -> the forecasts
    of each seed (the row's ``seeds`` gives their spread: mean and std over seeds of each
    metric)."""

    quantiles: dict[str, np.ndarray] = field(default_factory=dict)
    seed_runs: dict[str, list[np.ndarray]] = field(default_factory=dict)


def score(
    predictions: dict[str, np.ndarray],
    labels: np.ndarray,
    mask: np.ndarray,
    split,
    settings: ScoreSettings = ScoreSettings(),
    *,
    spread: Spread | None = None,
    benchmark: np.ndarray | None = None,
    start: int = 0,
) -> dict[str, Any]:
    """Metrics of every forecast on the test span of ``split`` (metrics.json's content).

    Every array covers the same dates: the split's ``start .. start + T - 1`` (all of them by
    default; :func:`scoring_window` is all that is read, and gives the same metrics).

    Args:
        predictions: model name -> point forecast ``[T, N, H]``, the one reported: for a
            model with seeds, their ensemble (:func:`seed_ensemble` of ``seed_runs``).
        labels: raw forward returns ``[T, N, H]`` (NaN where unknown).
        mask: ``[T, N]`` the cells scored (stocks with features; indices excluded).
        split: ``train, valid, test`` date indices, ``embargo`` and ``dates [T]``.
        settings: portfolio, quantile, label, factor and bootstrap settings.
        spread: quantile forecasts and the seeds' forecasts (:class:`Spread`).
        benchmark: ``[T]`` benchmark return of the top-k portfolio (default: equal-weight
            mean of the horizon-1 labels over ``mask``).
        start: the split's index of the arrays' first date.
    """
    span = scored_span(labels, mask, split, start)
    days, z, cell = span.days, span.z, span.mask
    H = labels.shape[2]
    spread = spread or Spread()
    quantiles, seed_runs = spread.quantiles, spread.seed_runs
    if benchmark is None:
        benchmark = benchmark_returns(labels[..., 0], mask, np.zeros(mask.shape[1], bool))
    lag = newey_west_lag(1)  # every model is scored against the horizon-1 label
    z1, cell_d = z[days, :, 0], cell[days]
    factors = [f for f in settings.factors if f in predictions]
    factor_scores = [predictions[f][..., 0] for f in factors]  # views, (T, N) each
    # Newey-West t of each model's daily IC / Rank IC and of its factor-neutral residual's;
    # the daily Rank IC series (raw and neutral) that the paired tests compare
    ic_stats, series, neutral, neutral_series = {}, {}, {}, {}
    for name, pred in predictions.items():
        ic_stats[name], series[name] = ic_statistics(pred[days, :, 0], z1, cell_d, lag)
        if factors and name != CONSTANT:
            resid = neutralize(pred[..., 0], factor_scores, cell, days)  # (D, N)
            neutral[name], neutral_series[name] = neutral_statistics(resid, z1, cell_d, lag)
    neutral_series = {k: v for k, v in neutral_series.items() if np.isfinite(v).any()}
    seed_rows = {
        name: seed_spread(runs, predictions[name], z1, cell_d, days, lag)
        for name, runs in seed_runs.items()
        if len(runs) > 1
    }

    pairs = PairSettings(lag, settings.bootstrap_draws, settings.bootstrap_seed)
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
            sm["seeds"] = seed_rows[name]
        sm.update(paired_rows(name, series, pairs, seeded=name in seed_rows))
        if "vs_own" in sm:  # own history is nested in this model: Clark-West on forecasts
            own = predictions[sm["vs_own"]["baseline"]][days, :, 0]
            adjusted = clark_west_daily(z1, own, pred[days, :, 0], cell_d)
            sm["vs_own"]["clark_west"] = clark_west_test(adjusted, lag)
        if name in neutral:
            paired = paired_rows(name, neutral_series, pairs, seeded=name in seed_rows)
            sm["neutral"] = {**neutral[name], **paired}
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
            "bootstrap": {
                "interval": "ci95: percentile interval of the mean paired difference",
                "method": "circular moving-block bootstrap over dates",
                "draws": settings.bootstrap_draws,
                "seed": settings.bootstrap_seed,
            },
            "clark_west": "vs_own: MSPE-adjusted (own history nested), one-sided p",
            "neutral_factors": factors,
            "seeds": "a seeded model's row scores the mean forecast of its seeds",
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


def neutral_statistics(
    resid: np.ndarray, z: np.ndarray, cell: np.ndarray, lag: int
) -> tuple[dict[str, float], np.ndarray]:
    """Rank IC, IC (means over dates), their Newey-West t and p and ``n_dates`` of a factor-
    neutral residual ``[D, N]`` (NaN on dates it has none), and its daily Rank IC ``[D]``."""
    rank_ic, ic = daily_rank_ic(resid, z, cell), daily_ic(resid, z, cell)
    stats, _ = ic_statistics(resid, z, cell, lag)
    nan = float("nan")
    means = {
        "ic": float(np.nanmean(ic)) if np.isfinite(ic).any() else nan,
        "rank_ic": float(np.nanmean(rank_ic)) if np.isfinite(rank_ic).any() else nan,
        "n_dates": int(np.isfinite(rank_ic).sum()),
    }
    return {**means, **stats}, rank_ic


def seed_spread(runs, reported, z1, cell_d, days, lag) -> dict[str, Any]:
    """``{"n", "<key>_mean", "<key>_std"}``: the spread over single seeds of each SEED_KEYS
    metric; ValueError when the reported forecast is not the seeds' ensemble."""
    got = reported[days, :, 0]
    want = seed_ensemble([r[days, :, 0] for r in runs])
    if not np.allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True):
        raise ValueError("a seeded model's forecast must be its seeds' mean (seed_ensemble)")
    per_seed = []
    for r in runs:
        one = r[days, :, 0]
        per_seed.append({**signal_metrics(one, z1, cell_d), **ic_statistics(one, z1, cell_d,
                                                                            lag)[0]})  # fmt: skip
    means, stds = seed_mean_std(per_seed, SEED_KEYS)
    return {
        "n": len(runs),
        **{f"{k}_mean": v for k, v in means.items()},
        **{f"{k}_std": v for k, v in stds.items()},
    }


@dataclass(frozen=True)
class PairSettings:
    """How paired differences are tested: Newey-West lag and the bootstrap's draws and seed."""

    lag: int
    draws: int = 2000
    seed: int = 0


def paired_rows(
    name: str, series: dict[str, np.ndarray], pairs: PairSettings, seeded: bool
) -> dict:
    """``vs_lightgbm`` and ``vs_reversal`` (reversal_1d) for every other model; ``vs_own``
    for hybrid_* and stage3_rawconcat_* rows (against stage3_own_<same model>): each the
    paired Newey-West test of the daily Rank IC difference and its block-bootstrap ``ci95``."""
    baselines = {"vs_lightgbm": "lightgbm", "vs_reversal": REVERSAL}
    for prefix in ("hybrid_", "stage3_rawconcat_"):
        if name.startswith(prefix):
            baselines["vs_own"] = "stage3_own_" + name.removeprefix(prefix)
    if name == "hybrid_joint":  # the joint model against the staged hybrid and own history
        staged = [n for n in series if n.startswith("hybrid_") and n != name]
        if staged:  # of the first Stage3 model beside it (its inner model, as configured)
            baselines["vs_staged"] = staged[0]
            baselines["vs_own"] = "stage3_own_" + staged[0].removeprefix("hybrid_")
    out = {}
    for key, base in baselines.items():
        if base == name or base not in series or name not in series:
            continue
        a, b = series[name], series[base]
        both = np.isfinite(a) & np.isfinite(b)
        ci = block_bootstrap_interval(a[both] - b[both], pairs.lag, pairs.draws, pairs.seed)
        out[key] = {"baseline": base, **paired_test(a, b, pairs.lag),
                    "ci95": [ci["lo"], ci["hi"]], "bootstrap_block": ci["block"]}  # fmt: skip
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
