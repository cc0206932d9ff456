"""Newey-West t-tests of daily IC series, checked against statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from relcast.evaluation.stats import (
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
