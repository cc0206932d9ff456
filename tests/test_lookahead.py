"""No look-ahead, proven: rewriting the future never changes features of the past.

For several dates t >= train_end we multiply every price and volume after t by random
factors (and change who trades after t); all features at dates <= t, normalised ones
included, must stay the same, and so must the mask. Labels at t may change.
"""

import numpy as np
import pandas as pd
import pytest

from relcast.data.panel import Panel
from relcast.features.build import build_features
from relcast.features.labels import forward_returns

T, N = 240, 12
TRAIN_END = 120


def make_panel(seed: int = 0, index: bool = True) -> Panel:
    rng = np.random.default_rng(seed)
    close = 30 * np.exp(np.cumsum(rng.normal(0, 0.02, (T, N)), axis=0))
    high = close * (1 + np.abs(rng.normal(0, 0.01, (T, N))))
    low = close * (1 - np.abs(rng.normal(0, 0.01, (T, N))))
    open_ = low + (high - low) * rng.random((T, N))
    volume = rng.lognormal(8, 1, (T, N))
    values = np.stack([open_, high, low, close, volume], axis=-1).astype(np.float32)
    mask = rng.random((T, N)) > 0.03  # random suspensions
    mask[:, 0] = True
    mask[:70, 4] = False  # lists at 70, valid from 130 (> TRAIN_END)
    mask[200:, 5] = False  # delisted at 200
    values[~mask] = np.nan
    symbols = [f"S{i}" for i in range(N)]
    meta = pd.DataFrame({"symbol": symbols, "is_index": (np.arange(N) == 0) & index})
    dates = pd.bdate_range("2019-01-01", periods=T).to_numpy()
    return Panel(dates, symbols, ("open", "high", "low", "close", "volume"), values, mask, meta)


def rewrite_future(panel: Panel, t: int, seed: int) -> Panel:
    """Scale every price / volume after t by random factors and reshuffle who trades."""
    rng = np.random.default_rng(seed)
    # every cell gets a price (carried forward, 30 before listing) so new trades are possible
    values = pd.DataFrame(panel.values.reshape(T, -1)).ffill().fillna(30.0).to_numpy()
    values = values.reshape(panel.values.shape).astype(np.float32)
    mask = panel.mask.copy()
    values[t + 1 :] *= rng.uniform(0.5, 2.0, values[t + 1 :].shape[:2])[:, :, None]
    values[t + 1 :, :, 4] *= rng.uniform(0.1, 10.0, values[t + 1 :, :, 4].shape)
    mask[t + 1 :] = rng.random(mask[t + 1 :].shape) > 0.2
    values[: t + 1] = panel.values[: t + 1]
    values[~mask] = np.nan
    return Panel(panel.dates, panel.symbols, panel.fields, values, mask, panel.meta)


@pytest.mark.parametrize("index", [True, False])  # a real index, or the equal-weight one
@pytest.mark.parametrize("t", [TRAIN_END, 150, 199, T - 2])
def test_features_up_to_t_ignore_everything_after_t(t, index):
    panel = make_panel(index=index)
    future = rewrite_future(panel, t, seed=t)
    before = build_features(panel, train_end=TRAIN_END, regime_window=20)
    after = build_features(future, train_end=TRAIN_END, regime_window=20)
    assert "regime" in before.groups  # the regime one-hots are checked like every feature
    np.testing.assert_array_equal(before.mask[: t + 1], after.mask[: t + 1])
    np.testing.assert_allclose(
        before.values[: t + 1], after.values[: t + 1], rtol=0, atol=1e-6, equal_nan=True
    )
    assert before.mask[t].sum() >= 5  # the dates compared do have valid rows
    # the future did change: features after t differ, and so do labels at t
    assert not np.allclose(before.values[t + 1 :], after.values[t + 1 :], equal_nan=True)
    lab_before = forward_returns(panel, horizons=1)[t]
    lab_after = forward_returns(future, horizons=1)[t]
    assert not np.allclose(lab_before, lab_after, equal_nan=True)


def test_features_on_a_truncated_panel_equal_the_full_ones():
    """Incremental inference: computing on data up to t gives what the full run gives at t."""
    panel = make_panel()
    train_end = panel.dates[TRAIN_END]  # a date, so it means the same in both panels
    full = build_features(panel, train_end=train_end, regime_window=20)
    for t in (TRAIN_END + 10, T - 30):
        cut = build_features(
            panel.select(end=panel.dates[t]), train_end=train_end, regime_window=20
        )
        np.testing.assert_array_equal(cut.mask, full.mask[: t + 1])
        np.testing.assert_allclose(cut.values, full.values[: t + 1], atol=1e-6, equal_nan=True)


def test_training_statistics_ignore_data_after_train_end():
    """Index-feature scaling changes when train_end moves, and only then."""
    panel = make_panel()
    a = build_features(panel, train_end=TRAIN_END).group("index")
    b = build_features(panel, train_end=TRAIN_END + 60).group("index")
    assert not np.allclose(a, b, equal_nan=True)
    own_a = build_features(panel, train_end=TRAIN_END).group("own")
    own_b = build_features(panel, train_end=TRAIN_END + 60).group("own")
    np.testing.assert_array_equal(own_a, own_b)  # cross-sectional: nothing fitted
