"""Indicators against TA-Lib as the oracle, on random-walk OHLCV, all columns at once."""

import numpy as np
import pytest

from relcast.features import indicators as ind

talib = pytest.importorskip("talib")

T, N = 500, 4
LATE = 3  # this column lists late: its first 40 rows are NaN
BURN = 250  # EMA-type seeds differ from TA-Lib's; compare after the seed has decayed


@pytest.fixture(scope="module")
def ohlcv():
    rng = np.random.default_rng(7)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (T, N)), axis=0))
    high = close * (1 + np.abs(rng.normal(0, 0.01, (T, N))))
    low = close * (1 - np.abs(rng.normal(0, 0.01, (T, N))))
    volume = rng.integers(1_000, 50_000, (T, N)).astype(float)
    close[:5, 1] = close[5, 1]  # flat stretch: ties in RSI / OBV / ROC
    for a in (close, high, low, volume):
        a[:40, LATE] = np.nan
    return high, low, close, volume


def _check(mine: np.ndarray, oracle_fn, arrays, burn: int = 0, atol=1e-8, rtol=1e-8):
    """Compare every column of ``mine [T, N]`` with TA-Lib run on that column's listed part."""
    for n in range(N):
        start = int(np.argmax(~np.isnan(arrays[0][:, n])))
        ref = oracle_fn(*(np.ascontiguousarray(a[start:, n]) for a in arrays))
        refs = ref if isinstance(ref, tuple) else (ref,)
        outs = mine if isinstance(mine, tuple) else (mine,)
        for out, want in zip(outs, refs, strict=True):
            assert np.isnan(out[:start, n]).all()  # nothing before listing, no back-fill
            got = out[start:, n]
            keep = ~np.isnan(want)
            keep[:burn] = False
            assert keep.sum() > 100
            np.testing.assert_allclose(got[keep], want[keep], atol=atol, rtol=rtol)


def test_sma_rolling_std_roc_max_min(ohlcv):
    high, low, close, _ = ohlcv
    _check(ind.sma(close, 20), lambda c: talib.SMA(c, 20), [close])
    _check(ind.rolling_std(close, 20), lambda c: talib.STDDEV(c, 20, 1), [close], atol=1e-7)
    _check(ind.simple_return(close, 10) * 100, lambda c: talib.ROC(c, 10), [close])
    _check(ind.rolling_max(high, 14), lambda h: talib.MAX(h, 14), [high])
    _check(ind.rolling_min(low, 14), lambda lo: talib.MIN(lo, 14), [low])


def test_warmup_rows_are_nan_exactly_like_talib(ohlcv):
    """Windowed indicators start where TA-Lib starts: no partial windows leak out."""
    _, _, close, _ = ohlcv
    got = ind.sma(close, 20)
    for n in range(N):
        start = int(np.argmax(~np.isnan(close[:, n])))
        want = talib.SMA(np.ascontiguousarray(close[start:, n]), 20)
        assert (np.isnan(got[start:, n]) == np.isnan(want)).all()


def test_ema_rsi_macd_atr_after_burn_in(ohlcv):
    high, low, close, _ = ohlcv
    _check(ind.ema(close, 12), lambda c: talib.EMA(c, 12), [close], burn=BURN, atol=1e-9)
    _check(ind.rsi(close, 14), lambda c: talib.RSI(c, 14), [close], burn=BURN, atol=1e-6)
    _check(ind.macd(close), lambda c: talib.MACD(c, 12, 26, 9), [close], burn=BURN, atol=1e-6)
    _check(
        ind.atr(high, low, close, 14),
        lambda h, lo, c: talib.ATR(h, lo, c, 14),
        [high, low, close],
        burn=BURN,
        atol=1e-7,
    )


def test_bollinger_and_obv_exact(ohlcv):
    _, _, close, volume = ohlcv
    _check(
        ind.bollinger(close, 20, 2.0),
        lambda c: talib.BBANDS(c, 20, 2.0, 2.0, 0),
        [close],
        atol=1e-7,
    )
    _check(ind.obv(close, volume), lambda c, v: talib.OBV(c, v), [close, volume])


def test_ffill_never_back_fills():
    x = np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, np.nan], [3.0, 4.0]])
    out = ind.ffill(x)
    expected = np.array([[np.nan, 1.0], [2.0, 1.0], [2.0, 1.0], [3.0, 4.0]])
    np.testing.assert_array_equal(out, expected)


def test_every_indicator_is_causal(ohlcv):
    """Changing rows after t leaves every indicator at rows <= t bit-for-bit unchanged."""
    high, low, close, volume = ohlcv
    open_ = (high + low) / 2
    before, warm = ind.compute_indicators(open_, high, low, close, volume)
    rng = np.random.default_rng(1)
    t = 300
    changed = [a.copy() for a in (open_, high, low, close, volume)]
    for a in changed:
        a[t + 1 :] *= rng.uniform(0.5, 1.5, a[t + 1 :].shape)
    after, _ = ind.compute_indicators(*changed)
    assert len(before) >= 30 and set(before) == set(warm)
    for name in before:
        np.testing.assert_array_equal(before[name][: t + 1], after[name][: t + 1], err_msg=name)
        assert not np.array_equal(before[name][t + 1 :], after[name][t + 1 :]), name


def test_features_finite_after_their_warmup(ohlcv):
    high, low, close, volume = ohlcv
    feats, warm = ind.compute_indicators((high + low) / 2, high, low, close, volume)
    for name, value in feats.items():
        assert value.shape == (T, N) and value.dtype == np.float32
        assert np.isfinite(value[warm[name] + 40 :]).all(), name  # 40: the late listing
