"""Factor baselines (relcast.features.factors): pandas reference values, no look-ahead, the
same values over a window of dates as over every date, switched and windowed by the config."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import relcast.features.factors as factors
from relcast.config import load_config
from relcast.features.factors import FACTORS, Factor, enabled_factors, factor_scores

T, N = 160, 7


def _market(seed: int = 0):
    """Prices with suspensions, a late listing, a stock that never trades and a zero-volume
    day: float64 ``close``, ``volume`` and ``mask [T, N]``."""
    rng = np.random.default_rng(seed)
    close = np.exp(np.cumsum(rng.normal(0, 0.02, (T, N)), axis=0)) * 20
    volume = rng.integers(1_000, 50_000, (T, N)).astype(np.float64)
    mask = rng.random((T, N)) > 0.1
    mask[30:55, 1] = False  # a long suspension
    mask[:70, 2] = False  # listed late
    mask[:, 3] = False  # never traded
    volume[80, 4] = 0.0
    close, volume = np.where(mask, close, np.nan), np.where(mask, volume, np.nan)
    return close, volume, mask


def _panel(close, volume, mask):
    fields = {"close": close, "volume": volume}
    return SimpleNamespace(field=lambda name: fields[name], mask=mask)


def _reference(name: str, close, volume, mask) -> np.ndarray:
    """Each factor as a plain pandas computation over every date."""
    kind, w = FACTORS[name].kind, FACTORS[name].window
    c = pd.DataFrame(close).where(mask).ffill()  # carried over days without a trade
    if kind in ("reversal", "momentum"):
        past = c / c.shift(w) - 1
        return (-past if kind == "reversal" else past).to_numpy()
    if kind == "low_volatility":
        ret = (c / c.shift(1) - 1).where(mask)
        return -ret.rolling(w, min_periods=max(2, -(-w // 2))).std().to_numpy()
    listed = c.notna()
    dollars = (pd.DataFrame(close) * pd.DataFrame(volume)).where(mask, 0.0).where(listed)
    mean = dollars.rolling(w, min_periods=w).mean()
    return -np.log(mean.where(mean > 0)).to_numpy()


def test_reversal_1d_is_minus_yesterdays_return():
    """The factor the benchmark's models must beat, against a plain pandas computation."""
    close, volume, mask = _market()
    got = factor_scores(_panel(close, volume, mask), FACTORS["reversal_1d"])
    frame = pd.DataFrame(close).where(mask).ffill()
    want = -(frame / frame.shift(1) - 1).to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)
    traded = mask[1:] & mask[:-1]  # both days traded: simply minus the day's return
    np.testing.assert_allclose(got[1:][traded], -(close[1:] / close[:-1] - 1)[traded])
    assert np.isnan(got[:70, 2]).all() and np.isnan(got[:, 3]).all()


@pytest.mark.parametrize("name", list(FACTORS))
def test_every_factor_matches_pandas(name):
    close, volume, mask = _market(1)
    got = factor_scores(_panel(close, volume, mask), FACTORS[name])
    want = _reference(name, close, volume, mask)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, equal_nan=True)
    assert np.isfinite(got[mask]).mean() > 0.6  # defined on most traded cells


@pytest.mark.parametrize("name", list(FACTORS))
def test_no_factor_reads_a_bar_after_its_date(name):
    """A factor at date t is the same whatever happens after t: prices, volumes and which
    days trade are all redrawn after t."""
    close, volume, mask = _market(2)
    base = factor_scores(_panel(close, volume, mask), FACTORS[name])
    rng = np.random.default_rng(9)
    for t in (25, 90, 140):
        c, v, m = close.copy(), volume.copy(), mask.copy()
        m[t + 1 :] = rng.random((T - t - 1, N)) > 0.5
        c[t + 1 :] = np.where(m[t + 1 :], rng.uniform(1, 100, (T - t - 1, N)), np.nan)
        v[t + 1 :] = np.where(m[t + 1 :], rng.uniform(0, 1e6, (T - t - 1, N)), np.nan)
        changed = factor_scores(_panel(c, v, m), FACTORS[name])
        np.testing.assert_array_equal(changed[: t + 1], base[: t + 1])
        assert not np.array_equal(changed[t + 1 :], base[t + 1 :], equal_nan=True)


@pytest.mark.parametrize("name", list(FACTORS))
def test_a_window_of_dates_equals_every_date(name, monkeypatch):
    close, volume, mask = _market(3)
    close, volume = close.astype(np.float32), volume.astype(np.float32)
    panel = _panel(close, volume, mask)
    monkeypatch.setattr(factors, "BLOCK_CELLS", 7 * N)  # blocks of 7 dates before the window
    whole = factor_scores(panel, FACTORS[name])
    assert whole.dtype == np.float32
    for lo, hi in [(0, T), (5, 60), (100, 130), (150, T), (19, 21)]:
        got = factor_scores(panel, FACTORS[name], slice(lo, hi))
        np.testing.assert_allclose(got, whole[lo:hi], rtol=2e-6, atol=1e-7, equal_nan=True)


def test_config_switches_and_windows_each_factor():
    default = enabled_factors(load_config().baselines)
    assert default == FACTORS  # every factor on by default, at the window in its name
    cfg = load_config(
        overrides=["baselines.reversal_5d.window=3", "baselines.liquidity_20d.enabled=false"]
    )
    chosen = enabled_factors(cfg.baselines)
    assert chosen["reversal_5d"] == Factor("reversal", 3) and "liquidity_20d" not in chosen
    with pytest.raises(ValueError, match="momentum_20d.window"):
        load_config(overrides=["baselines.momentum_window=20"])
