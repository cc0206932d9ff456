"""Forward-return labels and chronological splits with embargo."""

import numpy as np
import pandas as pd
import pytest

from relcast.data.panel import Panel
from relcast.features.labels import forward_returns, normalize_labels_cross_section
from relcast.features.splits import chronological_split, split_by_end_dates


def small_panel(T=30, N=4, seed=0) -> Panel:
    rng = np.random.default_rng(seed)
    close = 10 * np.exp(np.cumsum(rng.normal(0, 0.03, (T, N)), axis=0))
    values = np.repeat(close[:, :, None], 5, axis=2).astype(np.float32)
    mask = np.ones((T, N), dtype=bool)
    mask[10, 1] = False  # suspended
    mask[:5, 2] = False  # late listing
    values[~mask] = np.nan
    dates = pd.bdate_range("2021-03-01", periods=T).to_numpy()
    symbols = [f"S{i}" for i in range(N)]
    return Panel(dates, symbols, ("open", "high", "low", "close", "volume"), values, mask)


@pytest.mark.parametrize("delay", [0, 1, 2])
def test_forward_returns_match_loop_reference(delay):
    panel = small_panel()
    H = 3
    got = forward_returns(panel, horizons=H, delay=delay)
    close, mask = panel.field("close").astype(np.float64), panel.mask
    T, N = mask.shape
    want = np.full((T, N, H), np.nan)
    for t in range(T):
        for n in range(N):
            for h in range(1, H + 1):
                a, b = t + delay, t + delay + h
                if b < T and mask[a, n] and mask[b, n]:
                    want[t, n, h - 1] = close[b, n] / close[a, n] - 1
    assert got.shape == (T, N, H) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    # the label of date t never reads close[t] when delay > 0, and never a suspended bar
    assert np.isnan(got[10 - delay, 1]).all()
    assert np.isnan(got[T - delay - 1 :]).all()


def test_qlib_convention_delay_one():
    panel = small_panel()
    close = panel.field("close").astype(np.float64)
    got = forward_returns(panel, horizons=1, delay=1)[3, 0, 0]
    np.testing.assert_allclose(got, close[5, 0] / close[4, 0] - 1, rtol=1e-6)


def test_forward_returns_rejects_bad_arguments():
    with pytest.raises(ValueError, match="horizons"):
        forward_returns(small_panel(), horizons=0)
    with pytest.raises(ValueError, match="delay"):
        forward_returns(small_panel(), horizons=1, delay=-1)


def test_label_normalisation_per_date_and_horizon():
    panel = small_panel(T=40, N=12)
    labels = forward_returns(panel, horizons=2)
    mask = panel.mask.copy()
    mask[:, 0] = False
    z = normalize_labels_cross_section(labels, mask)
    assert np.isnan(z[:, 0]).all()
    assert np.isnan(z[np.isnan(labels)]).all()
    for t in (6, 20):
        for h in range(2):
            v = z[t, :, h][np.isfinite(z[t, :, h])]
            np.testing.assert_allclose([v.mean(), v.std()], [0, 1], atol=1e-5)
    flat = np.ones_like(labels)
    assert (normalize_labels_cross_section(flat, panel.mask)[panel.mask] == 0).all()


def test_split_is_chronological_with_embargo_gaps():
    dates = pd.bdate_range("2015-01-01", periods=200).to_numpy()
    H = 5
    split = chronological_split(dates, valid_frac=0.15, test_frac=0.15, embargo=H)
    tr, va, te = split.train, split.valid, split.test
    assert len(te) == 30 and len(va) == 30
    assert te[-1] == 199 and tr[0] == 0
    for a, b in ((tr, va), (va, te)):
        assert (np.diff(a) == 1).all()
        assert b[0] - a[-1] - 1 >= H  # >= embargo dates dropped between spans
        # no label window of one span reaches the next: close[t + H] is before the next span
        assert a[-1] + H < b[0]
    assert len(tr) + len(va) + len(te) + 2 * H == 200


def test_split_with_explicit_starts_and_describe():
    dates = pd.bdate_range("2015-01-01", periods=300).to_numpy()
    split = chronological_split(dates, embargo=2, valid_start="2015-07-01", test_start="2015-10-01")
    assert pd.Timestamp(dates[split.valid[0]]) == pd.Timestamp("2015-07-01")
    assert pd.Timestamp(dates[split.test[0]]) == pd.Timestamp("2015-10-01")
    assert split.valid[-1] == split.test[0] - 3
    text = split.describe()
    assert "2015-07-01" in text and "2015-10-01" in text and "embargo 2" in text


def test_split_without_validation_span():
    dates = pd.bdate_range("2015-01-01", periods=100).to_numpy()
    split = chronological_split(dates, valid_frac=0.0, test_frac=0.2, embargo=3)
    assert len(split.valid) == 0 and split.test[0] - split.train[-1] - 1 == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"valid_frac": 0.5, "test_frac": 0.5},
        {"embargo": 40},
        {"valid_start": "2015-03-01", "test_start": "2015-02-01"},
        {"test_start": "2030-01-01"},
    ],
)
def test_split_errors_name_the_problem(kwargs):
    dates = pd.bdate_range("2015-01-01", periods=60).to_numpy()
    with pytest.raises(ValueError, match="chronological_split|valid_frac|test_frac"):
        chronological_split(dates, **kwargs)


def test_split_by_end_dates_benchmark_protocol_with_embargo_at_each_boundary():
    dates = pd.bdate_range("2012-11-19", "2017-12-08").to_numpy()
    split = split_by_end_dates(dates, "2015-12-31", "2016-12-31", embargo=3)
    day = [pd.Timestamp(d) for d in dates]
    tr, va, te = split.train, split.valid, split.test
    assert tr[0] == 0 and va[0] == tr[-1] + 1 + 3 and te[0] == va[-1] + 1 + 3
    assert day[va[0]] == pd.Timestamp("2016-01-01") and day[te[0]] == pd.Timestamp("2017-01-02")
    assert day[tr[-1] + 3] == pd.Timestamp("2015-12-31")  # the embargo ends train's span
    assert day[va[-1] + 3] == pd.Timestamp("2016-12-30")  # last business day of 2016
    assert day[te[-1]] == pd.Timestamp("2017-12-08")  # no test_end: the last date
    # labels of a span never read the next span: t + embargo < first date of the next span
    assert tr[-1] + 3 < va[0] and va[-1] + 3 < te[0]
    trimmed = split_by_end_dates(dates, "2015-12-31", "2016-12-31", "2017-06-30", embargo=3)
    assert pd.Timestamp(dates[trimmed.test[-1]]) == pd.Timestamp("2017-06-30")
    np.testing.assert_array_equal(trimmed.valid, va)


@pytest.mark.parametrize(
    "ends, pattern",
    [
        ({"train_end": "2011-01-01", "valid_end": "2016-06-30"}, "train_end=2011-01-01 is outside"),
        ({"train_end": "2016-06-30", "valid_end": "2016-01-01"}, "train_end < valid_end"),
        ({"train_end": "2016-06-30", "valid_end": "2016-07-01"}, "valid span"),
        ({"train_end": "2016-06-30", "valid_end": "2016-10-31"}, "test span"),
        ({"train_end": "2016-06-30", "valid_end": None}, "together"),
    ],
)
def test_split_by_end_dates_errors_name_the_date(ends, pattern):
    dates = pd.bdate_range("2015-01-01", "2016-10-31").to_numpy()
    with pytest.raises(ValueError, match=pattern):
        split_by_end_dates(dates, **ends, embargo=2)
