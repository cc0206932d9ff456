"""build_features: groups, masks and warm-up, normalisation, index and calendar features."""

import numpy as np
import pandas as pd
import pytest

from relcast.data.panel import Panel
from relcast.features.build import build_features
from relcast.features.calendar import calendar_features
from relcast.features.indicators import compute_indicators, ffill
from relcast.features.normalize import cross_sectional_robust_zscore

FIELDS = ("open", "high", "low", "close", "volume")


def random_panel(T=260, N=10, seed=0, index=True, start="2020-01-01") -> Panel:
    """Random-walk OHLCV; symbol 0 is an index (no volume) when ``index``."""
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (T, N)), axis=0))
    high = close * (1 + np.abs(rng.normal(0, 0.01, (T, N))))
    low = close * (1 - np.abs(rng.normal(0, 0.01, (T, N))))
    open_ = low + (high - low) * rng.random((T, N))
    volume = rng.lognormal(10, 1, (T, N))
    values = np.stack([open_, high, low, close, volume], axis=-1).astype(np.float32)
    mask = np.ones((T, N), dtype=bool)
    symbols = np.array(["IDX" if index and i == 0 else f"S{i}" for i in range(N)])
    meta = pd.DataFrame({"symbol": symbols, "is_index": (np.arange(N) == 0) & index})
    if index:
        values[:, 0, 4] = np.nan  # indices often come without volume
    values[~mask] = np.nan
    dates = pd.bdate_range(start, periods=T).to_numpy()
    return Panel(dates, symbols, FIELDS, values, mask, meta)


def with_mask(panel: Panel, mask: np.ndarray) -> Panel:
    values = panel.values.copy()
    values[~mask] = np.nan
    return Panel(panel.dates, panel.symbols, panel.fields, values, mask, panel.meta)


def test_groups_shapes_and_mask_contract():
    panel = random_panel()
    fs = build_features(panel, train_end=150)
    T, N = panel.mask.shape
    assert fs.values.shape == (T, N, len(fs.names)) and fs.values.dtype == np.float32
    assert list(fs.groups) == ["own", "index", "calendar"]
    assert sorted(fs.names) == sorted(n for g in fs.groups.values() for n in g)
    assert len(fs.groups["own"]) >= 30
    assert fs.groups["index"] == [
        f"idx_IDX_{n}" for n in ("ret1", "ret5", "ret20", "vol20", "ma20", "rsi14")
    ]
    assert np.isfinite(fs.values[fs.mask]).all()
    assert np.isnan(fs.values[~fs.mask]).all()
    # after the longest warm-up (60 bars + EMA burn-in) every traded row is valid,
    # index rows included: Stage1 attends to indices like to stocks
    assert fs.mask[70:].all()
    assert not fs.mask[:60].any()


def test_suspension_and_late_listing_masks():
    panel = random_panel()
    mask = panel.mask.copy()
    mask[100:105, 3] = False  # suspended for a week
    mask[:80, 5] = False  # listed at date 80
    fs = build_features(with_mask(panel, mask), train_end=150)
    assert not fs.mask[100:105, 3].any()
    assert fs.mask[105:, 3].all()  # prices carried over the gap: valid again at once
    assert not fs.mask[:140, 5].any()  # the 60-bar windows need 60 earlier traded bars
    assert fs.mask[140:, 5].all()


def test_own_features_are_cross_sectionally_normalised_over_stocks():
    panel = random_panel(N=30)
    fs = build_features(panel, train_end=150)
    own = fs.group("own")[100:, 1:]  # stocks only (column 0 is the index)
    median = np.median(own, axis=1)  # (T', F)
    assert np.abs(median).max() < 1e-5
    assert np.abs(own).max() <= 5.0
    # the index row is scored against the stocks' median / MAD, not included in them
    ret1 = fs.names.index("ret1")
    raw = np.log(panel.field("close")[100:] / panel.field("close")[99:-1])  # (T', N)
    med = np.median(raw[:, 1:], axis=1)
    mad = 1.4826 * np.median(np.abs(raw[:, 1:] - med[:, None]), axis=1)
    expected = np.clip((raw[:, 0] - med) / mad, -5, 5)
    np.testing.assert_allclose(fs.values[100:, 0, ret1], expected, atol=1e-4)


def test_robust_zscore_matches_reference_with_ties_and_masks():
    rng = np.random.default_rng(3)
    T, N, F = 6, 9, 2
    x = rng.normal(size=(T, N, F))
    x[1, :, 0] = 2.0  # all equal: z = 0
    x[2, :6, 1] = 1.0  # MAD = 0 but spread: falls back to std
    x[3, 0, 0] = 1e6  # outlier: clipped
    valid = rng.random((T, N)) > 0.2
    valid[1:4] = True
    got = cross_sectional_robust_zscore(x, valid)
    for t in range(T):
        for f in range(F):
            v = x[t, valid[t], f]
            med = np.median(v)
            scale = 1.4826 * np.median(np.abs(v - med)) or np.std(v)
            want = np.clip((v - med) / scale, -5, 5) if scale > 0 else np.zeros_like(v)
            np.testing.assert_allclose(got[t, valid[t], f], want, rtol=1e-5, atol=1e-5)
    assert np.isnan(got[~valid]).all()
    assert got[3, 0, 0] == 5.0


def test_index_features_broadcast_and_fit_on_training_span_only():
    panel = random_panel()
    train_end = 150
    fs = build_features(panel, train_end=train_end)
    idx = fs.group("index")  # (T, N, F_idx)
    rows = fs.mask.all(axis=1)
    assert (idx[rows] == idx[rows][:, :1]).all()  # the same for every stock at a date
    # z-scored with statistics of the training span only (dates <= train_end)
    close = panel.field("close")[:, 0].astype(np.float64)
    ret1 = np.r_[np.nan, np.log(close[1:] / close[:-1])]  # (T,) valid from date 1
    train = ret1[1 : train_end + 1]
    expected = (ret1 - train.mean()) / train.std()
    got = idx[:, 0, fs.groups["index"].index("idx_IDX_ret1")]
    np.testing.assert_allclose(got[rows], expected[rows], rtol=1e-4, atol=1e-5)
    overall = (ret1 - np.nanmean(ret1)) / np.nanstd(ret1)  # what a leaky scaler would give
    assert np.abs(got[rows] - overall[rows]).max() > 1e-3


def test_equal_weight_index_when_panel_has_none():
    panel = random_panel(index=False)
    mask = panel.mask.copy()
    mask[50:60, 2] = False
    panel = with_mask(panel, mask)
    fs = build_features(panel, train_end=150)
    assert fs.groups["index"][0] == "idx_EW_ret1"
    close = ffill(np.where(mask, panel.field("close"), np.nan)).astype(np.float64)
    simple = np.where(mask[1:], close[1:] / close[:-1] - 1, np.nan)
    expected = np.log1p(np.nanmean(simple, axis=1))  # one-bar log return of the EW level
    got = fs.values[:, 0, fs.names.index("idx_EW_ret1")]
    ok = fs.mask[1:, 0]
    assert np.corrcoef(got[1:][ok], expected[ok])[0, 1] > 0.9999


def test_amount_field_replaces_turnover_proxy():
    panel = random_panel()
    amount = panel.field("close") * panel.field("volume")
    values = np.concatenate([panel.values, amount[:, :, None]], axis=2)
    with_amount = Panel(
        panel.dates, panel.symbols, (*FIELDS, "amount"), values, panel.mask, panel.meta
    )
    own = build_features(with_amount, train_end=150).groups["own"]
    assert "amount_ratio20" in own and "dollar_volume20" not in own


def test_options_drop_groups_and_windows_change_columns():
    panel = random_panel()
    fs = build_features(panel, include_index=False, include_calendar=False, windows=(5, 20))
    assert list(fs.groups) == ["own"]
    assert "ret20" in fs.names and "ret60" not in fs.names and "ma10" not in fs.names
    assert fs.mask[52:].all() and not fs.mask[:52].any()  # EMA26 burn-in (52) is now longest


def test_bad_input_errors():
    panel = random_panel()
    no_close = Panel(
        panel.dates, panel.symbols, ("open",), panel.values[:, :, :1], panel.mask, panel.meta
    )
    with pytest.raises(ValueError, match="close"):
        build_features(no_close)
    with pytest.raises(ValueError, match="train_end"):
        build_features(panel, train_end="1990-01-01")


def test_calendar_features_daily():
    # a trading calendar without Good Friday (2024-03-29)
    dates = pd.bdate_range("2024-01-25", "2024-04-03").drop(pd.Timestamp("2024-03-29"))
    names, cal = calendar_features(dates.to_numpy())
    c = dict(zip(names, cal.T, strict=True))
    assert "minute_of_session" not in c
    ends = dates[c["is_month_end"] == 1].strftime("%m-%d").tolist()
    assert ends == ["01-31", "02-29", "03-28"]  # 03-28: the last *trading* day of March
    assert dates[c["is_quarter_end"] == 1].strftime("%m-%d").tolist() == ["03-28"]
    np.testing.assert_allclose(c["day_of_week"][:5], [0.75, 1, 0, 0.25, 0.5])  # Thu..Wed
    np.testing.assert_allclose(c["day_of_month"][0], 24 / 30)
    np.testing.assert_allclose(c["month"][[0, -1]], [0, 3 / 11])
    assert (cal >= 0).all() and (cal <= 1).all()
    # the last date uses the business-day calendar (06-28 is a Friday): not a month end
    names, cal = calendar_features(pd.to_datetime(["2024-06-27", "2024-06-28"]).to_numpy())
    np.testing.assert_array_equal(cal[:, names.index("is_quarter_end")], [0, 1])


def test_calendar_features_intraday():
    day1 = pd.date_range("2024-05-30 09:30", periods=4, freq="2h")
    day2 = pd.date_range("2024-05-31 09:30", periods=4, freq="2h")
    names, cal = calendar_features(day1.append(day2).to_numpy())
    c = dict(zip(names, cal.T, strict=True))
    np.testing.assert_allclose(c["minute_of_session"], np.tile([0, 1 / 3, 2 / 3, 1], 2))
    np.testing.assert_array_equal(c["is_month_end"], [0] * 4 + [1] * 4)


def test_compute_indicators_has_about_thirty_named_features():
    panel = random_panel(T=100, N=3)
    c = panel.field("close")
    feats, warm = compute_indicators(c, c, c, c, panel.field("volume"))
    assert 30 <= len(feats) <= 40 and set(feats) == set(warm)
