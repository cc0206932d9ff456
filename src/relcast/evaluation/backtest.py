"""Cost-aware portfolio backtests in the field's vocabulary: top-k dropout and long-short.

Timing convention (see ``docs/formulas.md``): the score at date ``t`` is known at t's close,
trades happen at t's close, and positions are held over ``(t, t+1]``. So ``returns[t, n]``
must be the realised return from ``t`` to ``t+1``, i.e. the 1-step forward return label
``forward_returns(panel, 1)[..., 0]`` (use ``delay=1`` to trade one day after the signal, as
qlib's CSI300 benchmark does). The cost of the trades made at ``t`` is charged to the
return of ``(t, t+1]``.

Portfolios are described by target weights ``w[t, n]`` after trading at ``t`` (no drift
between rebalances: equal weights stay equal). Then, per date::

    gross[t]    = sum_n w[t, n] * returns[t, n]
    bought[t]   = sum_n max(w[t, n] - w[t-1, n], 0)      (w[-1] = 0: start in cash)
    sold[t]     = sum_n max(w[t-1, n] - w[t, n], 0)
    turnover[t] = bought[t] + sold[t]                    (two-sided, as qlib's report)
    cost[t]     = buy_cost * bought[t] + sell_cost * sold[t]
    net[t]      = gross[t] - cost[t]

A held name whose return is NaN (suspended over ``(t, t+1]``) earns 0, its price frozen;
the weight affected is reported in ``BacktestResult.missing_weight``. Names are never chosen
by their realised return, only by score and mask, so nothing from the future selects them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from relcast.data.panel import RelcastDataError

__all__ = [
    "TRADING_DAYS_CN",
    "TRADING_DAYS_US",
    "BacktestResult",
    "TradingCosts",
    "long_short_backtest",
    "long_short_weights",
    "max_drawdown",
    "portfolio_metrics",
    "topk_dropout_backtest",
    "topk_holdings",
]

TRADING_DAYS_US = 252  # annualisation factor for US daily data
TRADING_DAYS_CN = 238  # qlib's factor for A-shares (CSI300 benchmark)


@dataclass(frozen=True)
class TradingCosts:
    """Proportional costs on the weight bought / sold (default 5 bp / 15 bp, as qlib)."""

    buy: float = 0.0005
    sell: float = 0.0015

    def __post_init__(self) -> None:
        if self.buy < 0 or self.sell < 0:
            raise ValueError(f"costs must be >= 0, got buy_cost={self.buy}, sell_cost={self.sell}")


@dataclass(frozen=True, eq=False)
class BacktestResult:
    """Daily series of one backtest (all ``[T]`` unless noted) and their summary metrics.

    Attributes:
        daily_return: net return of ``(t, t+1]`` after the costs of trading at ``t``.
        gross_return: return before costs.
        cost: transaction costs charged at ``t`` (fraction of the book).
        turnover: two-sided traded weight at ``t`` (buys + sells; building the book from
            cash is 1.0, a full rotation 2.0).
        weights: ``float64 [T, N]`` target weights after trading at ``t`` (negative = short).
        missing_weight: absolute weight of positions whose return was NaN and counted as 0.
        benchmark: benchmark return of ``(t, t+1]``, or None.
        excess_return: ``daily_return - benchmark``, or None.
        metrics: :func:`portfolio_metrics` of ``daily_return`` (with benchmark and turnover).
    """

    daily_return: np.ndarray
    gross_return: np.ndarray
    cost: np.ndarray
    turnover: np.ndarray
    weights: np.ndarray
    missing_weight: np.ndarray
    benchmark: np.ndarray | None = None
    excess_return: np.ndarray | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def holdings(self) -> np.ndarray:
        """``bool [T, N]``: True where a position (long or short) is open after trading at t."""
        return self.weights != 0

    def to_frame(self, dates: np.ndarray | None = None) -> pd.DataFrame:
        """One row per date: the daily series plus compounded cumulative returns."""
        cols = {
            "daily_return": self.daily_return,
            "gross_return": self.gross_return,
            "cost": self.cost,
            "turnover": self.turnover,
            "cumulative_return": np.cumprod(1.0 + self.daily_return) - 1.0,
        }
        if self.benchmark is not None:
            cols["benchmark"] = self.benchmark
            cols["excess_return"] = self.excess_return
            cols["benchmark_cumulative_return"] = np.cumprod(1.0 + self.benchmark) - 1.0
        index = pd.DatetimeIndex(dates, name="date") if dates is not None else None
        return pd.DataFrame(cols, index=index)


# ------------------------------------------------------------------------ validation
def _check_inputs(
    score: np.ndarray, returns: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shapes and types at the boundary; dates where no return is defined are errors."""
    score = np.asarray(score, dtype=np.float64)
    returns = np.asarray(returns, dtype=np.float64)
    if score.ndim != 2:
        raise RelcastDataError(
            f"score must be [T, N] (dates x stocks), got shape {score.shape}; "
            "select one horizon first, e.g. pred[..., 0]"
        )
    if returns.shape != score.shape:
        raise RelcastDataError(
            f"returns has shape {returns.shape} but score has shape {score.shape}; pass the "
            "1-step forward return over (t, t+1] for the same dates and stocks"
        )
    mask = np.ones(score.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != score.shape:
        raise RelcastDataError(f"mask has shape {mask.shape}, expected {score.shape}")
    empty = ~(np.isfinite(returns) & mask).any(axis=1) & mask.any(axis=1)
    if empty.any():
        raise RelcastDataError(
            f"returns has no finite value at date index {np.flatnonzero(empty)[:5].tolist()}: "
            "the forward return is undefined on the last date(s) of a panel; drop those dates "
            "(e.g. score[:-1], returns[:-1], mask[:-1])"
        )
    return score, returns, mask


def _check_benchmark(benchmark: np.ndarray | None, num_dates: int) -> np.ndarray | None:
    if benchmark is None:
        return None
    benchmark = np.asarray(benchmark, dtype=np.float64)
    if benchmark.shape != (num_dates,):
        raise RelcastDataError(f"benchmark must have shape ({num_dates},), got {benchmark.shape}")
    if not np.isfinite(benchmark).all():
        bad = np.flatnonzero(~np.isfinite(benchmark))[:5].tolist()
        raise RelcastDataError(
            f"benchmark is not finite at date index {bad}; pass the index's 1-step forward "
            "return and drop dates where it is undefined"
        )
    return benchmark


# ------------------------------------------------------------------------ shared accounting
def _settle(
    weights: np.ndarray,
    returns: np.ndarray,
    costs: TradingCosts,
    benchmark: np.ndarray | None,
    periods_per_year: int,
) -> BacktestResult:
    """Turn target weights ``[T, N]`` into daily returns, costs and metrics (vectorised)."""
    finite = np.isfinite(returns)
    gross = (weights * np.where(finite, returns, 0.0)).sum(axis=1)  # (T,)
    missing = (np.abs(weights) * ~finite).sum(axis=1)  # (T,)
    prev = np.vstack([np.zeros((1, weights.shape[1])), weights[:-1]])  # start in cash
    delta = weights - prev  # (T, N)
    bought = np.clip(delta, 0.0, None).sum(axis=1)
    sold = np.clip(-delta, 0.0, None).sum(axis=1)
    cost = costs.buy * bought + costs.sell * sold
    net = gross - cost
    excess = None if benchmark is None else net - benchmark
    metrics = portfolio_metrics(
        net,
        periods_per_year=periods_per_year,
        benchmark=benchmark,
        turnover=bought + sold,
    )
    metrics["mean_cost"] = float(cost.mean()) if cost.size else float("nan")
    return BacktestResult(
        daily_return=net,
        gross_return=gross,
        cost=cost,
        turnover=bought + sold,
        weights=weights,
        missing_weight=missing,
        benchmark=benchmark,
        excess_return=excess,
        metrics=metrics,
    )


# ------------------------------------------------------------------------ top-k dropout
def topk_holdings(score: np.ndarray, mask: np.ndarray, *, topk: int, n_drop: int) -> np.ndarray:
    """Holdings ``bool [T, N]`` after trading at each date under qlib's TopkDropout rule.

    Each date: empty slots (fewer than ``topk`` held) are filled with the best-scored unheld
    names; then the ``n_drop`` worst-scored held names are swapped, worst first, for the next
    best unheld names, but only while the incoming name scores strictly higher. A name with
    ``mask[t]`` False can be neither bought nor sold at ``t`` (a held one stays held); a
    tradable held name with a non-finite score counts as worst-scored. With plentiful
    candidates this equals qlib's ``TopkDropoutStrategy(only_tradable=True)``; unlike qlib it
    never sells without a better replacement when candidates are scarce.
    """
    num_dates, num_stocks = score.shape
    can_buy = mask & np.isfinite(score)  # (T, N)
    sell_score = np.where(np.isfinite(score), score, -np.inf)  # NaN-scored holdings go first
    holdings = np.zeros((num_dates, num_stocks), bool)
    held = np.zeros(num_stocks, bool)
    # Inherently sequential: today's holdings depend on yesterday's. Each step is O(N log N).
    for t in range(num_dates):
        s = sell_score[t]
        cand = np.flatnonzero(can_buy[t] & ~held)
        cand = cand[np.argsort(-s[cand], kind="stable")]  # best first
        n_fill = max(min(topk - int(held.sum()), cand.size), 0)
        fill, rest = cand[:n_fill], cand[n_fill : n_fill + n_drop]
        sellable = np.flatnonzero(held & mask[t])
        sellable = sellable[np.argsort(s[sellable], kind="stable")][:n_drop]  # worst first
        m = min(rest.size, sellable.size)
        # rest is descending and sellable ascending, so the swaps that pay form a prefix
        n_swap = int(np.count_nonzero(s[rest[:m]] > s[sellable[:m]]))
        held[sellable[:n_swap]] = False
        held[fill] = True
        held[rest[:n_swap]] = True
        holdings[t] = held
    return holdings


def topk_dropout_backtest(
    score: np.ndarray,
    returns: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    topk: int = 50,
    n_drop: int = 5,
    costs: TradingCosts = TradingCosts(),
    benchmark: np.ndarray | None = None,
    periods_per_year: int = TRADING_DAYS_US,
) -> BacktestResult:
    """Long-only equal-weight top-k portfolio with dropout, costs, and excess vs a benchmark.

    Args:
        score: ``[T, N]`` signal known at t's close (higher = buy).
        returns: ``[T, N]`` realised return over ``(t, t+1]`` (the 1-step forward label).
        mask: ``bool [T, N]``, True where the name can trade at t (None = all tradable).
        topk: number of names held; each slot has weight ``1/topk`` (an unfilled slot is
            cash earning 0, so the book is never levered).
        n_drop: at most this many names are swapped per date once the book is full.
        costs: proportional costs on the weight bought / sold (5 bp / 15 bp).
        benchmark: ``[T]`` benchmark return over ``(t, t+1]`` (e.g. the index's forward
            return); sets ``excess_return`` and the information ratio.
        periods_per_year: annualisation factor (252 US, 238 A-shares).
    """
    score, returns, mask = _check_inputs(score, returns, mask)
    if not (isinstance(topk, int | np.integer) and 1 <= topk <= score.shape[1]):
        raise ValueError(f"topk must be an int in [1, N={score.shape[1]}], got {topk!r}")
    if not (isinstance(n_drop, int | np.integer) and 0 <= n_drop <= topk):
        raise ValueError(f"n_drop must be an int in [0, topk={topk}], got {n_drop!r}")
    benchmark = _check_benchmark(benchmark, score.shape[0])
    weights = topk_holdings(score, mask, topk=int(topk), n_drop=int(n_drop)) / float(topk)
    return _settle(weights, returns, costs, benchmark, periods_per_year)


# ------------------------------------------------------------------------ long-short
def long_short_weights(
    score: np.ndarray, mask: np.ndarray, quantile: float | int = 0.2
) -> np.ndarray:
    """Target weights ``[T, N]``: +1/k on the top-k scores, -1/k on the bottom-k (vectorised).

    ``quantile`` as a float in ``(0, 0.5]`` gives ``k[t] = max(1, floor(q * n_valid[t]))``,
    as an int gives ``k`` names per leg. A date with fewer than ``2 k`` valid names is flat.
    Valid = ``mask & isfinite(score)``; ties are broken by stock order.
    """
    valid = mask & np.isfinite(score)  # (T, N)
    n_valid = valid.sum(axis=1)  # (T,)
    if isinstance(quantile, bool):
        raise ValueError(f"quantile must be a float in (0, 0.5] or an int >= 1, got {quantile}")
    if isinstance(quantile, int | np.integer):
        if quantile < 1:
            raise ValueError(f"quantile as a count of names must be >= 1, got {quantile}")
        k = np.full(score.shape[0], int(quantile))
    elif 0 < quantile <= 0.5:
        k = np.maximum(np.floor(quantile * n_valid + 1e-9).astype(int), 1)
    else:
        raise ValueError(f"quantile must be a float in (0, 0.5] or an int >= 1, got {quantile}")
    k = np.where(2 * k <= n_valid, k, 0)[:, None]  # (T, 1); too few names -> flat
    s = np.where(valid, score, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")  # best first, invalid last
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(score.shape[1])[None, :], axis=1)  # 0 = best
    long = valid & (rank < k)
    short = valid & (rank >= n_valid[:, None] - k)
    return (long.astype(np.float64) - short) / np.maximum(k, 1)


def long_short_backtest(
    score: np.ndarray,
    returns: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    quantile: float | int = 0.2,
    costs: TradingCosts = TradingCosts(),
    periods_per_year: int = TRADING_DAYS_US,
) -> BacktestResult:
    """Top-minus-bottom bucket, equal weight, rebalanced daily, costs on both legs.

    The long leg has weight +1 and the short leg -1, so the gross return is
    ``mean(top returns) - mean(bottom returns)``. Any weight increase is a buy (opening a
    long or covering a short, ``costs.buy``), any decrease a sell (``costs.sell``). Buckets are
    chosen among names with ``mask[t]`` True and a finite score; a position in a name that
    becomes untradeable is assumed closable (an idealised signal diagnostic, unlike
    :func:`topk_dropout_backtest`, which freezes untradeable names).
    """
    score, returns, mask = _check_inputs(score, returns, mask)
    weights = long_short_weights(score, mask, quantile)
    return _settle(weights, returns, costs, None, periods_per_year)


# ------------------------------------------------------------------------ metrics
def max_drawdown(daily_returns: np.ndarray) -> float:
    """Largest peak-to-trough fall of the compounded equity curve, as a fraction <= 0.

    The curve starts at 1 before the first return, so a loss on day one counts.
    """
    r = np.asarray(daily_returns, dtype=np.float64)
    equity = np.concatenate([[1.0], np.cumprod(1.0 + r)])
    return float(np.min(equity / np.maximum.accumulate(equity) - 1.0))


def _relative_drawdown(wealth: np.ndarray) -> float:
    wealth = np.concatenate([[1.0], wealth])
    return float(np.min(wealth / np.maximum.accumulate(wealth) - 1.0))


def portfolio_metrics(
    daily_returns: np.ndarray,
    *,
    periods_per_year: int = TRADING_DAYS_US,
    benchmark: np.ndarray | None = None,
    turnover: np.ndarray | None = None,
) -> dict[str, Any]:
    """Summary of a daily return series (realised returns, never predicted ones).

    Keys (P = ``periods_per_year``, std with ddof=1, no risk-free rate):
        ``n_periods``, ``mean_return`` (per period),
        ``annualized_return_arithmetic`` = mean * P (qlib's "annualized_return", summed),
        ``annualized_return_compound`` = (prod(1 + r))^(P / T) - 1 (CAGR),
        ``total_return`` = prod(1 + r) - 1, ``annualized_volatility`` = std * sqrt(P),
        ``sharpe`` = mean / std * sqrt(P), ``max_drawdown`` (compounded curve, <= 0),
        ``cumulative_return`` (array ``[T]``, compounded).
    With ``benchmark`` (excess e = r - b): ``benchmark_annualized_return_arithmetic``,
        ``excess_annualized_return_arithmetic`` = mean(e) * P, ``tracking_error`` =
        std(e) * sqrt(P), ``information_ratio`` = mean(e) / std(e) * sqrt(P),
        ``excess_cumulative_return`` (array, wealth ratio prod(1+r)/prod(1+b) - 1) and
        ``excess_max_drawdown`` (of that ratio, <= 0).
    With ``turnover``: ``mean_turnover``.
    """
    r = np.asarray(daily_returns, dtype=np.float64)
    if r.ndim != 1:
        raise RelcastDataError(f"daily_returns must be 1-D [T], got shape {r.shape}")
    if not np.isfinite(r).all():
        bad = np.flatnonzero(~np.isfinite(r))[:5].tolist()
        raise RelcastDataError(f"daily_returns is not finite at index {bad}; drop those dates")
    n = r.size
    if n == 0:
        raise RelcastDataError("daily_returns is empty; a backtest needs at least one date")
    nan = float("nan")
    mean = float(r.mean())
    std = float(r.std(ddof=1)) if n > 1 else nan
    wealth = np.cumprod(1.0 + r)
    total = float(wealth[-1] - 1.0)
    out: dict[str, Any] = {
        "n_periods": n,
        "mean_return": mean,
        "annualized_return_arithmetic": mean * periods_per_year,
        "annualized_return_compound": max(1.0 + total, 0.0) ** (periods_per_year / n) - 1.0,
        "total_return": total,
        "annualized_volatility": std * math.sqrt(periods_per_year),
        "sharpe": mean / std * math.sqrt(periods_per_year) if std > 0 else nan,
        "max_drawdown": max_drawdown(r),
        "cumulative_return": wealth - 1.0,
    }
    if benchmark is not None:
        b = _check_benchmark(benchmark, n)
        e = r - b
        e_mean = float(e.mean())
        e_std = float(e.std(ddof=1)) if n > 1 else nan
        relative = wealth / np.cumprod(1.0 + b)  # wealth ratio portfolio / benchmark
        out.update(
            benchmark_annualized_return_arithmetic=float(b.mean()) * periods_per_year,
            excess_annualized_return_arithmetic=e_mean * periods_per_year,
            tracking_error=e_std * math.sqrt(periods_per_year),
            information_ratio=e_mean / e_std * math.sqrt(periods_per_year) if e_std > 0 else nan,
            excess_cumulative_return=relative - 1.0,
            excess_max_drawdown=_relative_drawdown(relative),
        )
    if turnover is not None:
        turnover = np.asarray(turnover, dtype=np.float64)
        out["mean_turnover"] = float(turnover.mean()) if turnover.size else nan
    return out
