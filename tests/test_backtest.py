"""Backtests against hand-computed numbers and a literal port of qlib's TopkDropout step."""

import math

import numpy as np
import pandas as pd
import pytest

from relcast.data.panel import RelcastDataError
from relcast.evaluation.backtest import (
    TradingCosts,
    long_short_backtest,
    max_drawdown,
    portfolio_metrics,
    topk_dropout_backtest,
    topk_holdings,
)

BUY, SELL = 0.0005, 0.0015


def qlib_topk_reference(score, mask, topk, n_drop):
    """Literal port of qlib's TopkDropoutStrategy.generate_trade_decision (only_tradable=True,
    method_sell="bottom", method_buy="top"), one date at a time with pandas."""
    symbols = np.arange(score.shape[1])
    held: list[int] = []
    out = np.zeros(score.shape, bool)
    for t in range(score.shape[0]):
        pred = pd.Series(score[t], index=symbols).dropna()
        tradable = set(np.flatnonzero(mask[t]))

        def first_n(li, n, reverse=False, tradable=tradable):
            res = []
            for si in reversed(li) if reverse else li:
                if si in tradable:
                    res.append(si)
                    if len(res) >= n:
                        break
            return res[::-1] if reverse else res

        last = pred.reindex(held).sort_values(ascending=False).index
        unheld = pred[~pred.index.isin(last)].sort_values(ascending=False).index
        today = first_n(unheld, n_drop + topk - len(last))
        comb = pred.reindex(last.union(pd.Index(today))).sort_values(ascending=False).index
        sell = last[last.isin(first_n(comb, n_drop, reverse=True))]
        buy = today[: len(sell) + topk - len(last)]
        held = [s for s in held if s not in set(sell)] + list(buy)
        out[t, held] = True
    return out


# ------------------------------------------------------------------------ drawdown, metrics
def test_max_drawdown_of_known_equity_curve():
    # equity 1, 1.1, 0.88, 0.924, 0.8316, 1.08108: peak 1.1, trough 0.8316
    r = np.array([0.1, -0.2, 0.05, -0.1, 0.3])
    assert max_drawdown(r) == pytest.approx(0.8316 / 1.1 - 1.0, abs=1e-12)
    # the curve starts at 1, so a first-day loss is a drawdown
    assert max_drawdown(np.array([-0.1, 0.05])) == pytest.approx(-0.1, abs=1e-12)
    assert max_drawdown(np.array([0.01, 0.02])) == 0.0


def test_annualisation_matches_hand_calculation():
    r = [0.01, -0.005, 0.002, 0.003]
    b = [0.004, -0.001, 0.0, 0.001]
    m = portfolio_metrics(np.array(r), periods_per_year=238, benchmark=np.array(b))
    mean = sum(r) / 4  # 0.0025
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / 3)
    wealth = 1.01 * 0.995 * 1.002 * 1.003
    assert m["annualized_return_arithmetic"] == pytest.approx(0.0025 * 238, rel=1e-12)
    assert m["annualized_return_compound"] == pytest.approx(wealth ** (238 / 4) - 1, rel=1e-12)
    assert m["total_return"] == pytest.approx(wealth - 1, rel=1e-12)
    assert m["annualized_volatility"] == pytest.approx(std * math.sqrt(238), rel=1e-12)
    assert m["sharpe"] == pytest.approx(mean / std * math.sqrt(238), rel=1e-12)
    e = [x - y for x, y in zip(r, b, strict=True)]  # 0.006, -0.004, 0.002, 0.002
    e_mean = sum(e) / 4
    e_std = math.sqrt(sum((x - e_mean) ** 2 for x in e) / 3)
    assert m["excess_annualized_return_arithmetic"] == pytest.approx(0.0015 * 238, rel=1e-12)
    assert m["information_ratio"] == pytest.approx(e_mean / e_std * math.sqrt(238), rel=1e-12)
    np.testing.assert_allclose(
        m["cumulative_return"], np.cumprod(1 + np.array(r)) - 1, rtol=0, atol=1e-15
    )
    # relative wealth after day 1 is 1.01 / 1.004: below its peak on day 2 only if it fell
    assert m["excess_max_drawdown"] == pytest.approx(
        (1.01 * 0.995 / (1.004 * 0.999)) / (1.01 / 1.004) - 1, rel=1e-12
    )


def test_metrics_reject_nan_returns():
    with pytest.raises(RelcastDataError, match="not finite"):
        portfolio_metrics(np.array([0.01, np.nan]))


# ------------------------------------------------------------------------ top-k dropout
def test_costs_on_known_turnover_sequence():
    # day 0 buys {0, 1} from cash, day 1 rotates fully to {2, 3}, day 2 keeps {2, 3}
    score = np.array([[4, 3, 2, 1], [1, 2, 3, 4], [1, 2, 3, 4]], dtype=float)
    zero = np.zeros_like(score)
    res = topk_dropout_backtest(score, zero, topk=2, n_drop=2, costs=TradingCosts(BUY, SELL))
    np.testing.assert_array_equal(res.holdings, [[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_allclose(res.turnover, [1.0, 2.0, 0.0])
    np.testing.assert_allclose(res.cost, [BUY, BUY + SELL, 0.0], atol=1e-15)
    np.testing.assert_allclose(res.daily_return, [-BUY, -(BUY + SELL), 0.0], atol=1e-15)
    assert res.metrics["mean_turnover"] == pytest.approx(1.0)

    # with n_drop=1 only the worst holding is swapped per day
    res = topk_dropout_backtest(score, zero, topk=2, n_drop=1, costs=TradingCosts(BUY, SELL))
    np.testing.assert_array_equal(res.holdings, [[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 1]])
    np.testing.assert_allclose(res.cost, [BUY, (BUY + SELL) / 2, (BUY + SELL) / 2], atol=1e-15)


def test_perfect_predictor_earns_realised_topk_mean_minus_costs():
    rng = np.random.default_rng(0)
    returns = rng.normal(0, 0.02, size=(40, 25))
    k = 5
    res = topk_dropout_backtest(returns, returns, topk=k, n_drop=k, costs=TradingCosts(BUY, SELL))
    top = np.sort(returns, axis=1)[:, -k:]
    sets = [set(np.argsort(-row)[:k]) for row in returns]
    bought = [len(sets[0])] + [len(sets[t] - sets[t - 1]) for t in range(1, 40)]
    sold = [0] + [len(sets[t - 1] - sets[t]) for t in range(1, 40)]
    expected = top.mean(axis=1) - (BUY * np.array(bought) + SELL * np.array(sold)) / k
    np.testing.assert_allclose(res.daily_return, expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.gross_return, top.mean(axis=1), rtol=0, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_dropout_matches_qlib_and_respects_mask(seed):
    rng = np.random.default_rng(seed)
    T, N, topk, n_drop = 60, 30, 6, 2
    score = rng.normal(size=(T, N))
    mask = rng.random((T, N)) < 0.8
    score[rng.random((T, N)) < 0.05] = np.nan  # missing predictions are never bought
    held = topk_holdings(score, mask, topk=topk, n_drop=n_drop)
    np.testing.assert_array_equal(held, qlib_topk_reference(score, mask, topk, n_drop))

    assert (held.sum(axis=1) == topk).all()
    prev = np.vstack([np.zeros((1, N), bool), held[:-1]])
    bought, sold = held & ~prev, prev & ~held
    assert (sold.sum(axis=1)[1:] <= n_drop).all()
    assert (bought.sum(axis=1)[1:] == sold.sum(axis=1)[1:]).all()
    # untradeable names are neither bought nor sold, and a missing score is never bought
    assert not (bought & ~mask).any() and not (sold & ~mask).any()
    assert not (bought & np.isnan(score)).any()
    # the masked-and-held case actually happened, so the check above is not vacuous
    assert (prev & held & ~mask).any()


def test_untradeable_holding_is_kept_and_untradeable_star_is_not_bought():
    score = np.array([[3.0, 2.0, 1.0, 0.0], [-9.0, 2.0, 1.0, 9.0], [-9.0, 2.0, 1.0, 9.0]])
    mask = np.array([[1, 1, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1]], dtype=bool)
    held = topk_holdings(score, mask, topk=2, n_drop=1)
    # day 1: stock 0 is worst but suspended -> kept; stock 3 is best but suspended -> not bought
    np.testing.assert_array_equal(held[1], [1, 1, 0, 0])
    # day 2: both tradable again: swap worst held (0) for best unheld (3)
    np.testing.assert_array_equal(held[2], [0, 1, 0, 1])


def test_no_swap_without_a_better_candidate():
    # day 1: the best outsider (3.0) is worse than the worst holding; day 2: a tie is no swap
    score = np.array([[5.0, 4.0, 1.0, 0.0], [5.0, 4.0, 3.0, 0.0], [5.0, 4.0, 4.0, 0.0]])
    held = topk_holdings(score, np.ones_like(score, bool), topk=2, n_drop=2)
    np.testing.assert_array_equal(held, [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]])


def test_excess_and_missing_returns():
    rng = np.random.default_rng(3)
    score = rng.normal(size=(10, 8))
    returns = rng.normal(0, 0.01, size=(10, 8))
    returns[4, :] = np.nan
    returns[4, 0] = 0.01  # a date where most returns are missing (suspensions)
    bench = rng.normal(0, 0.01, size=10)
    res = topk_dropout_backtest(score, returns, topk=3, n_drop=1, benchmark=bench)
    np.testing.assert_allclose(res.excess_return, res.daily_return - bench, atol=0)
    held4 = res.holdings[4]
    assert res.missing_weight[4] == pytest.approx((held4 & np.isnan(returns[4])).sum() / 3)
    assert res.gross_return[4] == pytest.approx(held4[0] * 0.01 / 3)
    assert np.isfinite(res.daily_return).all()
    frame = res.to_frame(pd.date_range("2024-01-01", periods=10, freq="B"))
    assert list(frame.columns[:4]) == ["daily_return", "gross_return", "cost", "turnover"]


def test_bad_inputs_get_clear_errors():
    score = np.zeros((5, 4))
    returns = np.zeros((5, 4))
    returns[-1] = np.nan  # the forward return on the last date is undefined
    with pytest.raises(RelcastDataError, match="drop those dates"):
        topk_dropout_backtest(score, returns, topk=2, n_drop=1)
    with pytest.raises(ValueError, match="topk"):
        topk_dropout_backtest(score[:-1], returns[:-1], topk=5, n_drop=1)
    with pytest.raises(RelcastDataError, match="benchmark"):
        topk_dropout_backtest(score[:-1], returns[:-1], topk=2, n_drop=1, benchmark=np.zeros(3))


# ------------------------------------------------------------------------ long-short
def test_long_short_costs_on_known_reversal():
    score = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    returns = np.array([[0.02, 0.0, 0.0, -0.01], [0.0, 0.0, 0.0, 0.0]])
    res = long_short_backtest(score, returns, quantile=1, costs=TradingCosts(BUY, SELL))
    np.testing.assert_array_equal(res.weights, [[1, 0, 0, -1], [-1, 0, 0, 1]])
    # day 0: buy the long, sell short the short; day 1: both flip, twice the weight each way
    np.testing.assert_allclose(res.turnover, [2.0, 4.0])
    np.testing.assert_allclose(res.cost, [BUY + SELL, 2 * (BUY + SELL)], atol=1e-15)
    np.testing.assert_allclose(res.gross_return, [0.03, 0.0], atol=1e-15)


def test_long_short_buckets_follow_quantile_and_mask():
    rng = np.random.default_rng(4)
    score = rng.normal(size=(5, 23))
    mask = rng.random((5, 23)) < 0.9
    res = long_short_backtest(score, np.zeros((5, 23)), mask, quantile=0.2)
    w = res.weights
    k = np.floor(0.2 * mask.sum(axis=1))
    np.testing.assert_array_equal((w > 0).sum(axis=1), k)
    np.testing.assert_array_equal((w < 0).sum(axis=1), k)
    np.testing.assert_allclose(w.sum(axis=1), 0.0, atol=1e-12)
    assert not (res.holdings & ~mask).any()
    s = np.where(mask, score, np.nan)
    for t in range(5):  # every long beats every valid non-long, every short is below
        assert np.nanmin(s[t][w[t] > 0]) > np.nanmax(s[t][(w[t] <= 0) & mask[t]])
        assert np.nanmax(s[t][w[t] < 0]) < np.nanmin(s[t][(w[t] >= 0) & mask[t]])


def test_long_short_random_score_has_zero_mean_and_planted_signal_is_found():
    rng = np.random.default_rng(5)
    T, N = 400, 100
    returns = rng.normal(0, 0.01, size=(T, N))
    noise = rng.normal(size=(T, N))
    res = long_short_backtest(noise, returns, quantile=0.2, costs=TradingCosts(0.0, 0.0))
    r = res.daily_return
    se = r.std(ddof=1) / math.sqrt(T)
    # score independent of returns: mean is N(0, se^2); 4 se fails with probability 6e-5
    assert abs(r.mean()) < 4 * se
    # a score correlated with the realised return earns a clearly positive spread
    planted = long_short_backtest(returns * 100 + noise, returns, costs=TradingCosts(0.0, 0.0))
    p = planted.daily_return
    assert p.mean() > 4 * p.std(ddof=1) / math.sqrt(T)
    # costs only ever lower the return, by exactly the cost series
    costly = long_short_backtest(noise, returns, quantile=0.2)
    np.testing.assert_allclose(costly.daily_return, r - costly.cost, atol=1e-15)
    assert (costly.cost > 0).all()


def test_planted_lead_lag_pays_on_synthetic_market():
    from relcast import synthetic_market
    from relcast.features.labels import forward_returns

    panel, truth = synthetic_market(num_stocks=40, num_days=300, seed=1)
    fwd = forward_returns(panel, 1)[:-1, :, 0]  # (T-1, N) return over (t, t+1]
    close = panel.field("close").astype(np.float64)
    past = np.full_like(close, np.nan)
    past[1:] = close[1:] / close[:-1] - 1.0  # known at t's close
    followers = np.flatnonzero(truth.leader_of >= 0)
    # oracle: a follower's score is its leader's return over (t-1, t]; others not scored
    score = np.full(fwd.shape, np.nan)
    score[:, followers] = past[:-1, truth.leader_of[followers]]
    mask = panel.mask[:-1] & ~panel.is_index
    ls = long_short_backtest(score, fwd, mask, quantile=2, costs=TradingCosts(0.0, 0.0))
    r = ls.daily_return
    t_stat = r.mean() / r.std(ddof=1) * math.sqrt(r.size)
    assert t_stat > 4  # measured 13.9 on this seed (lead-lag strength 0.35)
    flipped = long_short_backtest(-score, fwd, mask, quantile=2, costs=TradingCosts(0.0, 0.0))
    np.testing.assert_allclose(flipped.daily_return, -r, atol=1e-12)  # legs swap exactly
    bench = fwd[:, np.flatnonzero(panel.is_index)[0]]
    top = topk_dropout_backtest(score, fwd, mask, topk=3, n_drop=3, benchmark=bench)
    assert top.metrics["information_ratio"] > 1.0  # measured 6.4
    assert not top.holdings[:, panel.is_index].any()
