"""Statistics that tell signal from noise: Newey-West t-tests of daily IC series.

A mean daily IC of 0.01 over 250 days can be luck. Its standard error cannot come from the
plain ``std / sqrt(n)``: daily ICs are autocorrelated (overlapping label windows, persistent
forecasts), which makes the naive t-statistic too large. Newey-West (HAC) standard errors
with a Bartlett kernel account for that autocorrelation up to ``lag`` days.

- :func:`newey_west_test` tests whether the mean of one daily series (IC[t] or Rank IC[t]) is
  zero.
- :func:`paired_test` tests whether two models' daily series differ, on the dates where both
  are defined: the Newey-West test of ``d[t] = a[t] - b[t]``. Pairing removes the market's
  common day-to-day swings, so it is much sharper than comparing two means and two standard
  errors.
- :func:`newey_west_lag` is relcast's lag rule: the label horizon + 4.
- :func:`clark_west_daily` and :func:`clark_west_test`: Clark and West's (2007) MSPE-adjusted
  test of a small model nested in a larger one (own history in the hybrid), on the forecasts
  themselves rather than their ICs; one-sided, larger model better.
- :func:`block_bootstrap_interval`: a percentile interval for the mean of a daily series (a
  paired Rank IC difference) by the circular moving-block bootstrap over dates, seeded.

docs/statistics.md says which test answers which question.

Conventions (docs/formulas.md): no small-sample correction and two-sided p-values from the
standard normal distribution, which is what statsmodels reports for
``OLS(x, ones).fit(cov_type="HAC", cov_kwds={"maxlags": lag})``. Non-finite values (dates with
too few stocks) are dropped before testing, so the remaining dates are treated as adjacent.
With fewer than ``lag + 2`` finite values, or a series with no variation, the standard error,
t and p are NaN (the mean is still reported).

Pure functions over numpy arrays; no import from the pipeline or training floors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import norm

__all__ = [
    "block_bootstrap_interval",
    "block_length",
    "clark_west_daily",
    "clark_west_test",
    "newey_west_lag",
    "newey_west_se",
    "newey_west_test",
    "paired_test",
    "seed_mean_std",
    "two_sided_p",
]


def newey_west_lag(horizon: int) -> int:
    """relcast's Newey-West lag for daily ICs of an ``horizon``-step label: ``horizon + 4``.

    An h-step label overlaps the next h - 1 dates' labels, so daily ICs are at least MA(h - 1);
    the 4 extra lags (about a trading week) cover the persistence of the forecasts themselves.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    return int(horizon) + 4


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-d daily series, got shape {x.shape}")
    return x[np.isfinite(x)]


def _hac_se(x: np.ndarray, lag: int) -> float:
    """Bartlett-kernel HAC standard error of the mean of a finite 1-d array (no NaN check)."""
    n = x.size
    if n < lag + 2:
        return float("nan")
    e = x - x.mean()
    s = float(e @ e)  # n * gamma_0
    for j in range(1, lag + 1):  # lag is a handful of days: a loop over lags, not dates
        s += 2.0 * (1.0 - j / (lag + 1.0)) * float(e[j:] @ e[:-j])
    # a constant series leaves rounding noise of order eps * |mean|: treat it as no variation
    if s <= 1e-24 * float(x @ x) or s <= 0.0:
        return float("nan")
    return float(np.sqrt(s) / n)


def newey_west_se(x: np.ndarray, lag: int) -> float:
    """Newey-West standard error of the mean of the finite values of ``x [T]``.

    ``se^2 = (gamma_0 + 2 * sum_{j=1..lag} (1 - j / (lag + 1)) * gamma_j) / n`` with
    ``gamma_j = sum_t e[t] e[t-j] / n`` and ``e = x - mean(x)``. NaN with fewer than
    ``lag + 2`` finite values or no variation.
    """
    if lag < 0:
        raise ValueError(f"lag must be >= 0, got {lag}")
    return _hac_se(_finite(x), int(lag))


def two_sided_p(t: float) -> float:
    """Two-sided p-value of a t-statistic under the standard normal: ``2 * (1 - Phi(|t|))``."""
    return float(2.0 * norm.sf(abs(t))) if np.isfinite(t) else float("nan")


def newey_west_test(x: np.ndarray, lag: int) -> dict[str, float]:
    """Test ``mean(x) = 0`` for a daily series ``x [T]`` (NaN days dropped).

    Returns ``mean, se, t = mean / se, p`` (two-sided, normal), ``n`` (finite days) and ``lag``.
    """
    if lag < 0:
        raise ValueError(f"lag must be >= 0, got {lag}")
    v = _finite(x)
    mean = float(v.mean()) if v.size else float("nan")
    se = _hac_se(v, int(lag))
    t = mean / se if np.isfinite(se) else float("nan")
    return {"mean": mean, "se": se, "t": t, "p": two_sided_p(t), "n": int(v.size), "lag": lag}


def paired_test(a: np.ndarray, b: np.ndarray, lag: int) -> dict[str, float]:
    """Test ``mean(a - b) = 0`` on the dates where both daily series ``[T]`` are finite.

    Returns ``mean_diff, se, t, p, n, lag`` (see :func:`newey_west_test`); a positive ``t``
    means ``a`` is higher on average.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired series must be 1-d over the same dates, got shapes {a.shape} and {b.shape}"
        )
    both = np.isfinite(a) & np.isfinite(b)
    res = newey_west_test(a[both] - b[both], lag)
    res["mean_diff"] = res.pop("mean")
    return {k: res[k] for k in ("mean_diff", "se", "t", "p", "n", "lag")}


def seed_mean_std(
    per_seed: Sequence[Mapping[str, float]], keys: Sequence[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and std (ddof = 1) over seeds of each ``key``; NaN seeds are skipped.

    ``per_seed`` holds one metrics dict per seed; returns ``(means, stds)`` keyed like ``keys``
    (std NaN with fewer than two finite seeds).
    """
    means, stds = {}, {}
    for k in keys:
        v = np.asarray([r.get(k, np.nan) for r in per_seed], dtype=np.float64)
        v = v[np.isfinite(v)]
        means[k] = float(v.mean()) if v.size else float("nan")
        stds[k] = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return means, stds


def clark_west_daily(
    y: np.ndarray, small: np.ndarray, large: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Clark-West's adjusted MSPE difference per date ``[D]`` from ``[D, N]`` arrays: the mean
    over the cells where ``mask`` holds and all three are finite of

        (y - small)^2 - [(y - large)^2 - (small - large)^2]  =  2 (y - small)(large - small)

    ``small``: the forecasts of the nested (restricted) model, ``large``: the model that nests
    it. Under the null that the large model's extra inputs are worthless its mean is zero;
    NaN on a date without such a cell."""
    y, small, large = (np.asarray(a, dtype=np.float64) for a in (y, small, large))
    ok = np.asarray(mask, dtype=bool) & np.isfinite(y) & np.isfinite(small) & np.isfinite(large)
    adj = np.where(ok, (y - small) ** 2 - ((y - large) ** 2 - (small - large) ** 2), 0.0)
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, adj.sum(axis=1) / n, np.nan)


def clark_west_test(adjusted: np.ndarray, lag: int) -> dict[str, float]:
    """Clark-West test from the daily adjusted differences ``[D]`` (:func:`clark_west_daily`):
    ``mean_adjusted, se, t`` (Newey-West, as :func:`newey_west_test`), ``n``, ``lag`` and the
    one-sided ``p = 1 - Phi(t)``: small when the larger model forecasts better."""
    res = newey_west_test(adjusted, lag)
    p = float(norm.sf(res["t"])) if np.isfinite(res["t"]) else float("nan")
    return {"mean_adjusted": res["mean"], "se": res["se"], "t": res["t"], "p": p,
            "n": res["n"], "lag": lag}  # fmt: skip


def block_length(n: int, lag: int) -> int:
    """relcast's bootstrap block: ``max(lag + 1, ceil(n ** (1/3)))`` dates (the Newey-West
    window, or the usual ``n^(1/3)`` rate when the series is long), at most ``n``."""
    return int(min(max(n, 1), max(lag + 1, int(np.ceil(n ** (1.0 / 3.0))))))


def block_bootstrap_interval(
    x: np.ndarray, lag: int, draws: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Percentile interval of the mean of the finite values of a daily series ``x [D]`` by
    the circular moving-block bootstrap: each draw glues ``ceil(n / b)`` blocks of ``b``
    consecutive dates (:func:`block_length`), started at uniform random dates (wrapping
    around), and takes the mean of the first ``n`` values; seeded, so a rerun gives the same
    interval. Returns ``lo, hi, level, block, draws`` (NaN bounds with fewer than 2 values)."""
    v = _finite(x)
    n = v.size
    b = block_length(n, lag)
    out = {"lo": float("nan"), "hi": float("nan"), "level": level, "block": b, "draws": draws}
    if n < 2:
        return out
    k = -(-n // b)  # blocks per draw
    wrapped = np.concatenate([v, v[: b - 1]])
    sums = np.cumsum(np.concatenate([[0.0], wrapped]))
    block_sums = sums[b : b + n] - sums[:n]  # (n,) the sum of the block starting at each date
    tail = n - (k - 1) * b  # values the last block contributes
    tail_sums = sums[tail : tail + n] - sums[:n]
    rng = np.random.default_rng(seed)
    means = np.empty(draws)
    step = max(1, 2**20 // k)  # draws at a time: bounded memory on long series
    for a in range(0, draws, step):
        starts = rng.integers(0, n, size=(min(step, draws - a), k))  # (draws, k)
        total = block_sums[starts[:, :-1]].sum(axis=1) + tail_sums[starts[:, -1]]
        means[a : a + len(starts)] = total / n
    alpha = (1.0 - level) / 2.0
    out["lo"], out["hi"] = (float(q) for q in np.quantile(means, [alpha, 1.0 - alpha]))
    return out
