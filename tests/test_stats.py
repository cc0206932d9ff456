"""Newey-West t-tests of daily IC series, checked against statsmodels; Clark-West against a
hand computation; the block-bootstrap interval against its definition and its coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from relcast.evaluation.stats import (
    block_bootstrap_interval,
    block_length,
    clark_west_daily,
    clark_west_test,
    newey_west_lag,
    newey_west_se,
    newey_west_test,
    paired_test,
    seed_mean_std,
    two_sided_p,
)

sm = pytest.importorskip("statsmodels.api")


def _autocorrelated(rng: np.random.Generator, n: int, mean: float, phi: float = 0.5) -> np.ndarray:
    """AR(1) noise around ``mean``: the case where the naive t-statistic is too large."""
    eps = rng.normal(0.0, 0.05, n)
    x = np.empty(n)
    x[0] = eps[0]
    for t in range(1, n):
        x[t] = phi * x[t - 1] + eps[t]
    return mean + x


def _statsmodels(x: np.ndarray, lag: int):
    return sm.OLS(x, np.ones_like(x)).fit(cov_type="HAC", cov_kwds={"maxlags": lag})


@pytest.mark.parametrize("lag", [0, 1, 5, 12])
@pytest.mark.parametrize("seed", [0, 1])
def test_newey_west_matches_statsmodels(lag, seed):
    x = _autocorrelated(np.random.default_rng(seed), 250, mean=0.01)
    ref = _statsmodels(x, lag)
    got = newey_west_test(x, lag)
    assert got["mean"] == pytest.approx(ref.params[0], rel=1e-12)
    assert got["se"] == pytest.approx(ref.bse[0], rel=1e-10)
    assert got["t"] == pytest.approx(ref.tvalues[0], rel=1e-10)
    assert got["p"] == pytest.approx(ref.pvalues[0], rel=1e-8)
    assert newey_west_se(x, lag) == got["se"]
    assert got["n"] == 250 and got["lag"] == lag


def test_autocorrelation_widens_the_standard_error():
    x = _autocorrelated(np.random.default_rng(3), 500, mean=0.0, phi=0.6)
    naive = x.std(ddof=0) / math.sqrt(x.size)  # lag 0 = White's s.e. of a mean
    assert newey_west_se(x, 0) == pytest.approx(naive, rel=1e-12)
    assert newey_west_se(x, 9) > 1.5 * naive


def test_paired_test_matches_statsmodels_on_common_dates():
    rng = np.random.default_rng(4)
    common = _autocorrelated(rng, 300, mean=0.02)  # the market's shared daily swings
    a = common + rng.normal(0.01, 0.02, 300)
    b = common + rng.normal(0.0, 0.02, 300)
    a[[3, 50, 51]] = np.nan  # undefined in a only
    b[[10, 299]] = np.nan  # undefined in b only
    both = np.isfinite(a) & np.isfinite(b)
    ref = _statsmodels(a[both] - b[both], 5)
    got = paired_test(a, b, 5)
    assert got["n"] == 295
    assert got["mean_diff"] == pytest.approx(ref.params[0], rel=1e-12)
    assert got["t"] == pytest.approx(ref.tvalues[0], rel=1e-10)
    assert got["p"] == pytest.approx(ref.pvalues[0], rel=1e-8)
    # pairing removes the common swings: the same difference in means, tested unpaired,
    # would be drowned by them
    unpaired_se = math.hypot(newey_west_se(a, 5), newey_west_se(b, 5))
    assert got["se"] < 0.5 * unpaired_se
    # antisymmetric, and a model against itself has nothing to test
    flipped = paired_test(b, a, 5)
    assert flipped["t"] == pytest.approx(-got["t"]) and flipped["p"] == pytest.approx(got["p"])
    same = paired_test(a, a, 5)
    assert same["mean_diff"] == 0.0 and math.isnan(same["t"]) and math.isnan(same["p"])


def test_nan_days_are_dropped():
    x = _autocorrelated(np.random.default_rng(5), 120, mean=0.01)
    holes = x.copy()
    holes[[0, 7, 60, 119]] = np.nan
    holes[30] = np.inf
    got = newey_west_test(holes, 5)
    ref = newey_west_test(holes[np.isfinite(holes)], 5)
    assert got == ref and got["n"] == 115 and math.isfinite(got["t"])


@pytest.mark.parametrize("n", [0, 1, 2, 6])
def test_too_few_days_give_nan_not_an_error(n):
    x = np.r_[np.linspace(0.01, 0.03, n), np.full(4, np.nan)]
    got = newey_west_test(x, 5)  # needs lag + 2 = 7 finite days
    assert got["n"] == n
    assert math.isnan(got["se"]) and math.isnan(got["t"]) and math.isnan(got["p"])
    if n:
        assert got["mean"] == pytest.approx(np.nanmean(x))
    else:
        assert math.isnan(got["mean"])
    assert math.isfinite(newey_west_test(np.linspace(0.01, 0.03, 7), 5)["t"])
    assert math.isnan(paired_test(x, x * 0.5, 5)["t"])


def test_constant_series_has_no_t():
    got = newey_west_test(np.full(50, 0.03), 5)
    assert got["mean"] == pytest.approx(0.03) and math.isnan(got["t"]) and math.isnan(got["p"])


def test_planted_mean_is_recovered():
    """White noise with a planted mean: t ~ mean / se, and the test finds it only when real."""
    rng = np.random.default_rng(7)
    n, sigma = 1000, 0.05
    for mean in (0.0, 0.01):
        x = mean + rng.normal(0.0, sigma, n)
        got = newey_west_test(x, 5)
        expected_t = mean / (sigma / math.sqrt(n))  # 0 and 6.3
        assert got["t"] == pytest.approx(got["mean"] / got["se"])
        assert abs(got["t"] - expected_t) < 2.5  # within sampling noise of the planted value
        assert got["se"] == pytest.approx(sigma / math.sqrt(n), rel=0.15)
    assert got["p"] < 1e-6
    # the false-positive rate under the null is close to the nominal 5 %
    nulls = rng.normal(0.0, sigma, (400, 250))
    p = np.array([newey_west_test(row, 5)["p"] for row in nulls])
    assert 0.02 < (p < 0.05).mean() < 0.09


def test_p_value_is_two_sided_normal():
    assert two_sided_p(1.959963984540054) == pytest.approx(0.05)
    assert two_sided_p(-1.959963984540054) == pytest.approx(0.05)
    assert two_sided_p(0.0) == 1.0 and math.isnan(two_sided_p(float("nan")))


def test_lag_rule_and_bad_arguments():
    assert newey_west_lag(1) == 5 and newey_west_lag(5) == 9
    with pytest.raises(ValueError, match="horizon"):
        newey_west_lag(0)
    with pytest.raises(ValueError, match="lag"):
        newey_west_test(np.zeros(10), -1)
    with pytest.raises(ValueError, match="same dates"):
        paired_test(np.zeros(10), np.zeros(9), 5)
    with pytest.raises(ValueError, match="1-d"):
        newey_west_test(np.zeros((3, 4)), 1)


def test_seed_mean_std():
    per_seed = [{"rank_ic": 0.01, "ic": 0.02}, {"rank_ic": 0.03, "ic": np.nan}]
    means, stds = seed_mean_std(per_seed, ["rank_ic", "ic", "mse"])
    assert means["rank_ic"] == pytest.approx(0.02)
    assert stds["rank_ic"] == pytest.approx(np.std([0.01, 0.03], ddof=1))
    assert means["ic"] == pytest.approx(0.02) and math.isnan(stds["ic"])
    assert math.isnan(means["mse"]) and math.isnan(stds["mse"])


def test_clark_west_on_identical_forecasts_adjusts_nothing():
    rng = np.random.default_rng(0)
    y, f = rng.normal(size=(50, 20)), rng.normal(size=(50, 20))
    adjusted = clark_west_daily(y, f, f.copy(), np.ones((50, 20), bool))
    np.testing.assert_array_equal(adjusted, 0.0)
    res = clark_west_test(adjusted, lag=5)
    assert res["mean_adjusted"] == 0.0 and math.isnan(res["t"]) and math.isnan(res["p"])


def test_clark_west_by_hand():
    """Two dates, three stocks, one masked cell: the adjusted MSPE difference written out."""
    y = np.array([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]])
    small = np.array([[0.5, 0.0, 0.0], [0.2, 1.0, np.nan]])
    large = np.array([[0.8, -0.5, 9.0], [0.1, 1.5, 0.0]])
    mask = np.array([[True, True, False], [True, True, True]])
    # date 0, cells 0 and 1: (y - s)^2 - ((y - l)^2 - (s - l)^2)
    d0 = ((0.5**2 - (0.2**2 - 0.3**2)) + (1.0**2 - (0.5**2 - 0.5**2))) / 2
    # date 1: cell 2 has no small forecast
    d1 = (((-0.2) ** 2 - ((-0.1) ** 2 - 0.1**2)) + (1.0**2 - (0.5**2 - 0.5**2))) / 2
    got = clark_west_daily(y, small, large, mask)
    np.testing.assert_allclose(got, [d0, d1])
    product = 2 * (y - small) * (large - small)  # the same, in Clark-West's other form
    np.testing.assert_allclose(got, [product[0, :2].mean(), product[1, :2].mean()])
    series = np.random.default_rng(1).normal(0.1, 1.0, 300)
    res = clark_west_test(series, lag=5)
    want = newey_west_test(series, 5)
    assert res["t"] == pytest.approx(want["t"]) and res["mean_adjusted"] == want["mean"]
    assert res["p"] == pytest.approx(1 - 0.5 * (1 + math.erf(want["t"] / math.sqrt(2))))


def test_clark_west_finds_what_the_larger_model_adds():
    """A large model that adds a real input forecasts better (t > 3); one that adds noise
    does not (the adjustment removes the noise's MSPE penalty: t near 0, not very negative)."""
    rng = np.random.default_rng(2)
    D, N = 250, 60
    own, extra = rng.normal(size=(D, N)), rng.normal(size=(D, N))
    y = 0.2 * own + 0.1 * extra + rng.normal(size=(D, N))
    mask = np.ones((D, N), bool)
    small = 0.2 * own
    better = clark_west_test(clark_west_daily(y, small, small + 0.1 * extra, mask), 5)
    assert better["t"] > 3 and better["p"] < 0.01
    noisy = small + 0.1 * rng.normal(size=(D, N))
    worse = clark_west_test(clark_west_daily(y, small, noisy, mask), 5)
    assert abs(worse["t"]) < 3


def test_block_bootstrap_interval_is_its_definition():
    """Block sums give what gluing the blocks' values and averaging the first n gives, for the
    same random starts; a seed gives the same interval twice."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.01, 0.05, 101)
    x[[5, 40]] = np.nan  # dropped first: 99 values
    v = x[np.isfinite(x)]
    n, lag, draws = v.size, 5, 300
    b = block_length(n, lag)
    assert b == max(lag + 1, math.ceil(n ** (1 / 3))) == 6
    k = -(-n // b)
    starts = np.random.default_rng(7).integers(0, n, size=(draws, k))
    idx = ((starts[:, :, None] + np.arange(b)) % n).reshape(draws, -1)[:, :n]
    means = v[idx].mean(axis=1)
    want = np.quantile(means, [0.025, 0.975])
    got = block_bootstrap_interval(x, lag, draws=draws, seed=7)
    assert [got["lo"], got["hi"]] == pytest.approx(want.tolist(), rel=1e-12)
    assert got["block"] == b and block_bootstrap_interval(x, lag, draws, seed=7) == got
    assert got["lo"] < v.mean() < got["hi"]


def test_block_bootstrap_interval_covers_the_true_mean_at_about_the_nominal_rate():
    """AR(1) daily differences with a known mean: the 95% interval holds it in about 95% of
    400 simulated test years (binomial sd of the rate: 0.011)."""
    rng = np.random.default_rng(4)
    true, reps, n = 0.01, 400, 250
    hits = 0
    for r in range(reps):
        x = _autocorrelated(rng, n, true, phi=0.3)
        ci = block_bootstrap_interval(x, lag=5, draws=400, seed=r)
        hits += ci["lo"] <= true <= ci["hi"]
    assert 0.89 <= hits / reps <= 0.99, hits / reps
