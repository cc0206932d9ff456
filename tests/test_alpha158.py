"""Alpha158: values against the formulas computed by hand, look-ahead, masking, wiring."""

import numpy as np
import pandas as pd
import pytest

from relcast.data.panel import Panel
from relcast.features.alpha158 import WINDOWS, alpha158_features, alpha158_names
from relcast.features.build import build_features
from relcast.training.stage3_inputs import assemble_inputs

FIELDS = ("open", "high", "low", "close", "volume")


def ohlcv(T=75, N=3, seed=0):
    """Random-walk OHLCV ``[T, N]`` arrays; prices on a coarse grid so windows have ties."""
    rng = np.random.default_rng(seed)
    close = np.round(20 * np.exp(np.cumsum(rng.normal(0, 0.02, (T, N)), axis=0)), 1)
    high = close + np.round(rng.random((T, N)), 1)
    low = close - np.round(rng.random((T, N)), 1)
    open_ = np.round(low + (high - low) * rng.random((T, N)), 2)
    volume = np.round(rng.lognormal(8, 1, (T, N)))
    return open_, high, low, close, volume


def make_panel(T=120, N=6, seed=0, amount=False) -> Panel:
    o, h, lo, c, v = ohlcv(T, N, seed)
    fields = FIELDS + (("amount",) if amount else ())
    arrays = [o, h, lo, c, v] + ([v * (h + lo + c) / 3] if amount else [])
    values = np.stack(arrays, axis=-1).astype(np.float32)
    symbols = np.array([f"S{i}" for i in range(N)])
    meta = pd.DataFrame({"symbol": symbols, "is_index": np.zeros(N, bool)})
    dates = pd.bdate_range("2021-01-01", periods=T).to_numpy()
    return Panel(dates, symbols, fields, values, np.ones((T, N), bool), meta)


def reference(o, h, lo, c, v, t, n, d):
    """Each formula at one (t, stock) with plain numpy/pandas on the window's values."""
    w = slice(t - d + 1, t + 1)
    cw, hw, lw, vw = c[w, n], h[w, n], lo[w, n], v[w, n]
    ct, vt = c[t, n], v[t, n]
    x = np.arange(1, d + 1)
    slope, intercept = np.polyfit(x, cw, 1)
    prev_c, prev_v = c[t - d : t, n], v[t - d : t, n]  # the bar before each window bar
    dc, dv = cw - prev_c, vw - prev_v
    wv = np.abs(cw / prev_c - 1) * vw
    out = {
        "ROC": c[t - d, n] / ct,
        "MA": cw.mean() / ct,
        "STD": cw.std(ddof=1) / ct,
        "BETA": slope / ct,
        "RSQR": np.corrcoef(x, cw)[0, 1] ** 2,
        "RESI": (cw[-1] - (intercept + slope * d)) / ct,
        "MAX": hw.max() / ct,
        "MIN": lw.min() / ct,
        "QTLU": pd.Series(cw).quantile(0.8) / ct,
        "QTLD": pd.Series(cw).quantile(0.2) / ct,
        "RANK": pd.Series(cw).rank(pct=True).iloc[-1],
        "RSV": (ct - lw.min()) / (hw.max() - lw.min() + 1e-12),
        "IMAX": (np.argmax(hw) + 1) / d,
        "IMIN": (np.argmin(lw) + 1) / d,
        "IMXD": (np.argmax(hw) - np.argmin(lw)) / d,
        "CORR": np.corrcoef(cw, np.log(vw + 1))[0, 1],
        "CORD": np.corrcoef(cw / prev_c, np.log(vw / prev_v + 1))[0, 1],
        "CNTP": np.mean(dc > 0),
        "CNTN": np.mean(dc < 0),
        "CNTD": np.mean(dc > 0) - np.mean(dc < 0),
        "SUMP": dc.clip(min=0).sum() / (np.abs(dc).sum() + 1e-12),
        "SUMN": (-dc).clip(min=0).sum() / (np.abs(dc).sum() + 1e-12),
        "SUMD": (dc.clip(min=0).sum() - (-dc).clip(min=0).sum()) / (np.abs(dc).sum() + 1e-12),
        "VMA": vw.mean() / (vt + 1e-12),
        "VSTD": vw.std(ddof=1) / (vt + 1e-12),
        "WVMA": wv.std(ddof=1) / (wv.mean() + 1e-12),
        "VSUMP": dv.clip(min=0).sum() / (np.abs(dv).sum() + 1e-12),
        "VSUMN": (-dv).clip(min=0).sum() / (np.abs(dv).sum() + 1e-12),
        "VSUMD": (dv.clip(min=0).sum() - (-dv).clip(min=0).sum()) / (np.abs(dv).sum() + 1e-12),
    }
    return {f"{op}{d}": value for op, value in out.items()}


def test_rolling_features_match_the_formulas_by_hand():
    o, h, lo, c, v = ohlcv()
    f, warm = alpha158_features(o, h, lo, c, v)
    assert list(f) == alpha158_names() and len(f) == 157  # no vwap: VWAP0 left out
    T, N = c.shape
    checked = 0
    for d in WINDOWS:
        for t in range(d, T, 7):  # every feature is defined from t = d on
            for n in range(N):
                for name, want in reference(o, h, lo, c, v, t, n, d).items():
                    assert t >= warm[name]
                    got = f[name][t, n]
                    assert got == pytest.approx(want, rel=2e-5, abs=2e-6), (name, t, n)
                    checked += 1
    assert checked > 29 * len(WINDOWS) * N * 5


def test_kbar_and_price_features():
    o, h, lo, c, v = ohlcv(T=10)
    vwap = (h + lo + c) / 3
    f, _ = alpha158_features(o, h, lo, c, v, vwap=vwap)
    assert len(f) == 158 and list(f)[9:13] == ["OPEN0", "HIGH0", "LOW0", "VWAP0"]
    t, n = 4, 1
    O, H, L, C = o[t, n], h[t, n], lo[t, n], c[t, n]
    span = H - L + 1e-12
    want = {
        "KMID": (C - O) / O,
        "KLEN": (H - L) / O,
        "KMID2": (C - O) / span,
        "KUP": (H - max(O, C)) / O,
        "KUP2": (H - max(O, C)) / span,
        "KLOW": (min(O, C) - L) / O,
        "KLOW2": (min(O, C) - L) / span,
        "KSFT": (2 * C - H - L) / O,
        "KSFT2": (2 * C - H - L) / span,
        "OPEN0": O / C,
        "HIGH0": H / C,
        "LOW0": L / C,
        "VWAP0": vwap[t, n] / C,
    }
    for name, value in want.items():
        assert f[name][t, n] == pytest.approx(value, rel=1e-5), name


def test_rolling_values_wait_for_a_full_window_after_listing():
    o, h, lo, c, v = ohlcv(T=40)
    for a in (o, h, lo, c, v):
        a[:12, 0] = np.nan  # stock 0 lists at t = 12
    f, warm = alpha158_features(o, h, lo, c, v, windows=(5,))
    for name, value in f.items():
        assert np.isnan(value[:12, 0]).all(), name  # nothing before listing
        assert np.isfinite(value[12 + warm[name] :, 0]).all(), name  # defined after warm-up
        if warm[name]:
            assert np.isnan(value[12 + warm[name] - 1, 0]), name  # ...and not before


def test_no_look_ahead_and_no_leak_between_stocks():
    o, h, lo, c, v = ohlcv()
    base, _ = alpha158_features(o, h, lo, c, v)
    t0 = 40
    rng = np.random.default_rng(5)
    changed = [a.copy() for a in (o, h, lo, c, v)]
    for a in changed:
        a[t0 + 1 :] *= rng.uniform(0.5, 2.0, a[t0 + 1 :].shape)  # rewrite the future
        a[:, 2] *= 1.3  # and all of stock 2
    after, _ = alpha158_features(*changed)
    for name in base:
        np.testing.assert_array_equal(base[name][: t0 + 1, :2], after[name][: t0 + 1, :2], name)
    assert not np.allclose(base["MA20"][t0 + 5 :, :2], after["MA20"][t0 + 5 :, :2])


def test_build_features_group_masking_and_look_ahead():
    panel = make_panel()
    plain = build_features(panel, train_end=80)
    fs = build_features(panel, train_end=80, alpha158=True)
    assert list(fs.groups) == ["own", "alpha158", "index", "calendar"]
    assert fs.groups["alpha158"] == alpha158_names()
    assert np.isfinite(fs.values[fs.mask]).all()
    # the group waits for its 60-bar warm-up like "own" and masks no extra row after it
    np.testing.assert_array_equal(fs.mask, plain.mask)
    assert fs.mask[65:].all()
    # a stock that did not trade at t has no value at t (not its neighbour's, not stale)
    mask = panel.mask.copy()
    mask[90:95, 3] = False
    values = panel.values.copy()
    values[~mask] = np.nan
    gap = Panel(panel.dates, panel.symbols, panel.fields, values, mask, panel.meta)
    gfs = build_features(gap, train_end=80, alpha158=True)
    cols = gfs.columns(gfs.groups["alpha158"])
    assert np.isnan(gfs.values[90:95, 3][:, cols]).all() and not gfs.mask[90:95, 3].any()
    assert np.isfinite(gfs.values[90:95, 2][:, cols]).all()
    # features at dates <= t ignore every later bar
    t = 100
    future = panel.values.copy()
    future[t + 1 :] *= np.random.default_rng(1).uniform(0.7, 1.4, future[t + 1 :].shape)
    moved = Panel(panel.dates, panel.symbols, panel.fields, future, panel.mask, panel.meta)
    mfs = build_features(moved, train_end=80, alpha158=True)
    np.testing.assert_array_equal(mfs.values[: t + 1], fs.values[: t + 1])


def test_flat_and_zero_volume_windows_are_filled_not_masked():
    panel = make_panel(T=100)
    values = panel.values.copy()
    values[70:90, 1, :4] = values[69, 1, 3]  # stock 1: flat price for 20 bars
    values[75:80, 2, 4] = 0.0  # stock 2: no volume for 5 bars
    flat = Panel(panel.dates, panel.symbols, panel.fields, values, panel.mask, panel.meta)
    fs = build_features(flat, train_end=60, alpha158=True)
    assert fs.mask[65:].all()
    cols = fs.columns(["RSQR5", "CORR5", "CORD5"])
    assert (fs.values[80:90, 1][:, cols[:2]] == 0).all()  # undefined -> the date's median
    assert (fs.values[76:81, 2][:, cols[2]] == 0).all()


def test_vwap_from_amount_and_stage3_inputs_include_the_group():
    fs = build_features(make_panel(amount=True), train_end=80, alpha158=True)
    assert "VWAP0" in fs.groups["alpha158"] and len(fs.groups["alpha158"]) == 158
    inputs = assemble_inputs(fs, feature_set="own")
    assert inputs.groups["alpha158"] == fs.groups["alpha158"]
    assert set(fs.groups["alpha158"]) <= set(inputs.names)
