"""The synthetic market: valid bars, consistent masks, and planted structure that simple
statistics on the panel itself (not the truth object) recover."""

import time

import numpy as np
import pandas as pd
import pytest

from relcast.data.synthetic import synthetic_market, synthetic_market_file
from relcast.metrics import daily_rank_ic, summarize_ic


def _returns(panel):
    """Close-to-close simple returns ``[T-1, N]`` read from the panel."""
    close = panel.field("close").astype(np.float64)
    return close[1:] / close[:-1] - 1.0


@pytest.fixture(scope="module")
def market():
    return synthetic_market(num_stocks=20, num_days=600, seed=0)


def test_deterministic_for_a_seed():
    (a, ta), (b, tb) = synthetic_market(seed=3), synthetic_market(seed=3)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(ta.leader_of, tb.leader_of)
    np.testing.assert_array_equal(ta.regime, tb.regime)
    c, _ = synthetic_market(seed=4)
    assert not np.allclose(a.field("close"), c.field("close"))


def test_layout_symbols_meta_and_dates(market):
    panel, truth = market
    assert panel.values.shape == (600, 21, 5)
    assert panel.fields == ("open", "high", "low", "close", "volume")
    assert list(panel.symbols[:3]) == ["S000", "S001", "S002"]
    assert panel.symbols[-1] == truth.index_symbol == "INDEX"
    assert panel.is_index.tolist() == [False] * 20 + [True]
    assert panel.sectors[-1] == "index"
    assert set(panel.sectors[:-1]) == {f"sector_{k}" for k in range(4)}
    assert (panel.sectors[:-1] == np.array([f"sector_{s}" for s in truth.sector_of[:-1]])).all()
    assert (panel.meta["name"] != "").all() and (panel.meta["market"] == "SYN").all()
    assert (pd.DatetimeIndex(panel.dates).dayofweek < 5).all()  # business days
    for arr in (truth.betas, truth.sector_of, truth.leader_of, truth.idio_vol):
        assert arr.shape == (21,)
    assert truth.returns.shape == (600, 21) and truth.regime.shape == (600,)
    assert len(truth.pairs) == 5  # num_stocks // 4 by default


def test_ohlcv_consistent(market):
    panel, truth = market
    o, h, l, c, v = (panel.field(f) for f in ("open", "high", "low", "close", "volume"))
    assert (l > 0).all()
    assert (l <= np.minimum(o, c)).all() and (np.maximum(o, c) <= h).all()
    assert (v > 0).all()
    # the panel's closes follow the true returns (float32 rounding only)
    np.testing.assert_allclose(_returns(panel), truth.returns[1:], atol=2e-5)
    # volume rises with the size of the move, stock by stock
    r = np.abs(truth.returns[1:, :-1])
    lv = np.log(v[1:, :-1])
    corr = [np.corrcoef(r[:, n], lv[:, n])[0, 1] for n in range(20)]
    assert min(corr) > 0.2


def test_mask_and_nan_agree_with_suspensions_and_late_listings():
    panel, truth = synthetic_market(
        num_stocks=30, num_days=400, seed=1, missing_prob=0.1, late_listing=3
    )
    assert (np.isnan(panel.values).any(axis=2) == ~panel.mask).all()
    assert (np.isnan(panel.values).all(axis=2) == ~panel.mask).all()
    assert panel.mask[:, panel.is_index].all()  # the index always trades
    stocks = panel.mask[:, ~panel.is_index]
    # late listings: masked from the start, then a trading history
    first = np.argmax(stocks, axis=0)
    late = np.flatnonzero(first > 20)
    assert len(late) == 3
    for n in late:
        assert not stocks[: first[n], n].any() and stocks[first[n] :, n].mean() > 0.8
    # suspensions elsewhere at about the requested rate
    listed = np.arange(400)[:, None] >= first[None, :]
    assert abs(1 - stocks[listed].mean() - 0.1) < 0.02
    # the latent path continues under a suspension: traded closes still match true returns
    close = panel.field("close")
    both = panel.mask[1:] & panel.mask[:-1]
    np.testing.assert_allclose(
        (close[1:] / close[:-1] - 1)[both], truth.returns[1:][both], atol=2e-5
    )


def test_lead_lag_recovered_by_regression(market):
    panel, truth = market
    r = _returns(panel)
    for leader, follower in truth.pairs:
        coef = np.polyfit(r[:-1, leader], r[1:, follower], 1)[0]
        assert abs(coef - truth.lead_lag_strength) < 0.12
    # non-pairs show nothing of the kind
    others = [n for n in range(20) if truth.leader_of[n] < 0]
    leader = truth.pairs[0, 0]
    coefs = [np.polyfit(r[:-1, leader], r[1:, n], 1)[0] for n in others]
    assert np.median(np.abs(coefs)) < 0.1


def test_followers_need_the_leader_not_their_own_history(market):
    panel, truth = market
    r = _returns(panel)
    leaders, followers = truth.pairs.T
    # cross-sectionally across followers: leader's same-day return predicts next day
    via_leader = summarize_ic(daily_rank_ic(r[:-1, leaders], r[1:, followers]))["ic"]
    own_history = summarize_ic(daily_rank_ic(r[:-1, followers], r[1:, followers]))["ic"]
    assert via_leader > 0.15
    assert abs(own_history) < 0.06
    # each follower's own lag-1 autocorrelation stays small next to its leader correlation
    auto = np.array([np.corrcoef(r[:-1, f], r[1:, f])[0, 1] for f in followers])
    cross = np.array([np.corrcoef(r[:-1, a], r[1:, f])[0, 1] for a, f in truth.pairs])
    assert abs(auto.mean()) < 0.15
    assert (cross > 2 * np.abs(auto)).mean() >= 0.8


def test_betas_and_sectors_recovered(market):
    panel, truth = market
    r = _returns(panel)
    index = r[:, -1]
    stocks = r[:, :-1]
    est = np.array([np.polyfit(index, stocks[:, n], 1)[0] for n in range(20)])
    assert np.corrcoef(est, truth.betas[:-1])[0, 1] > 0.8
    assert np.median(np.abs(est - truth.betas[:-1])) < 0.15
    # the index's closes are the market factor
    np.testing.assert_allclose(index, truth.market_returns[1:], atol=2e-6)
    # same-sector stocks move together more than cross-sector ones
    resid = stocks - np.outer(index, est)
    corr = np.corrcoef(resid.T)
    same = truth.sector_of[:-1][:, None] == truth.sector_of[:-1][None, :]
    off = ~np.eye(20, dtype=bool)
    assert corr[same & off].mean() > corr[~same].mean() + 0.1


def test_regimes_differ_in_mean_and_vol():
    _, truth = synthetic_market(num_stocks=4, num_days=2500, seed=2)
    m, regime = truth.market_returns, truth.regime
    counts = np.bincount(regime, minlength=3)
    assert (counts > 200).all()
    assert ((regime[1:] != regime[:-1]).mean()) < 0.05  # persistent, not i.i.d.
    means = [m[regime == k].mean() for k in range(3)]
    assert means[0] > means[2] > means[1]  # bull > sideways > bear
    vols = [m[regime == k].std() for k in range(3)]
    assert vols[1] > vols[0] > vols[2]


def test_intraday_sessions():
    panel, truth = synthetic_market(num_stocks=3, num_days=500, freq="1min", seed=0)
    stamps = pd.DatetimeIndex(panel.dates)
    assert len(stamps) == 500 and stamps.is_monotonic_increasing
    minute = stamps.hour * 60 + stamps.minute
    morning = (minute >= 9 * 60 + 31) & (minute <= 11 * 60 + 30)
    afternoon = (minute >= 13 * 60 + 1) & (minute <= 15 * 60)
    assert (morning | afternoon).all()
    assert (stamps.normalize().value_counts() <= 240).all()
    assert truth.returns[:, :-1].std() < 0.003  # scaled down to one minute


def test_argument_errors():
    with pytest.raises(ValueError, match="lead_lag_pairs"):
        synthetic_market(num_stocks=4, lead_lag_pairs=3)
    with pytest.raises(ValueError, match="freq"):
        synthetic_market(freq="W")
    with pytest.raises(ValueError, match="missing_prob"):
        synthetic_market(missing_prob=1.0)
    panel, truth = synthetic_market(num_stocks=6, num_days=50, lead_lag_pairs=0)
    assert (truth.leader_of == -1).all() and truth.pairs.shape == (0, 2)


@pytest.mark.slow
def test_large_market_is_fast():
    synthetic_market(num_stocks=50, num_days=100)  # warm-up
    t0 = time.perf_counter()
    panel, _ = synthetic_market(num_stocks=500, num_days=2500, seed=0)
    assert time.perf_counter() - t0 < 2.0
    assert panel.values.shape == (2500, 501, 5)


@pytest.mark.parametrize("block_dates", [1, 37, 5000])
def test_file_market_is_the_same_market_written_by_blocks(tmp_path, block_dates):
    """``synthetic_market_file`` writes block by block what ``synthetic_market`` returns at
    once: the same bars bit for bit (carried lead-lag, price level and suspensions), mask, meta."""
    args = dict(num_stocks=9, num_days=400, seed=5, missing_prob=0.05, late_listing=2,
                lead_lag_strength=0.8)  # fmt: skip
    whole, _ = synthetic_market(**args)
    part = synthetic_market_file(tmp_path / "v.npy", block_dates=block_dates, **args)
    base = part.values
    while not isinstance(base, np.memmap) and base is not None:
        base = base.base
    assert base is not None, "the panel's values are not a view of the file"
    np.testing.assert_array_equal(np.asarray(part.values), whole.values)
    np.testing.assert_array_equal(part.mask, whole.mask)
    np.testing.assert_array_equal(part.dates, whole.dates)
    pd.testing.assert_frame_equal(part.meta, whole.meta)


def test_file_market_memory_is_a_block_not_the_market(tmp_path):
    """Generating into the file allocates per block: the traced peak of a 200 x 4,000 market
    written by 256-date blocks stays below a quarter of what the in-memory draw needs."""
    import tracemalloc

    args = dict(num_stocks=200, num_days=4000, seed=1)
    tracemalloc.start()
    synthetic_market(**args)
    whole = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    panel = synthetic_market_file(tmp_path / "v.npy", block_dates=256, **args)
    part = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert panel.values.shape == (4000, 201, 5)
    assert part < whole / 4, (part, whole)
