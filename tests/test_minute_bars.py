"""Minute bars end to end: an intraday CSV with an A-share lunch break and overnight gaps.

Sessions are 09:31-11:30 and 13:01-15:00 (240 bars a day). Everything downstream of the
reader counts *bars*, not clock time: a horizon-h label, an indicator window of w bars and a
Stage3 lookback of L bars step over the lunch break and the night as if the bars were
adjacent (the bar after 11:30 is 13:01; the bar after 15:00 is the next day's 09:31).
``minute_of_session`` is the exception that carries the clock: the bar's time of day
scaled to [0, 1] over the calendar's earliest and latest bar times, so it jumps by
91/329 across the lunch break and restarts at 0 every morning.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import relcast
from relcast.features.build import build_features
from relcast.features.labels import forward_returns
from relcast.features.splits import chronological_split
from relcast.models.cross_sectional import Stage1Config, predict_stage1
from relcast.training.specs import Stage1Spec, Stage3Spec, TrainerSpec
from relcast.training.stage1 import fit_stage1
from relcast.training.stage3 import fit_stage3, predict_stage3
from relcast.training.stage3_inputs import assemble_inputs

BARS_PER_DAY = 240
DAYS = 3
H = 3  # horizons, in bars


@pytest.fixture(scope="module")
def minute_csv(tmp_path_factory):
    """A long CSV of 3 days of minute bars (6 stocks + index, a few suspended bars)."""
    panel, _ = relcast.synthetic_market(
        num_stocks=6, num_days=DAYS * BARS_PER_DAY, seed=1, freq="1min", missing_prob=0.01
    )
    frame = panel.to_frame()  # suspended (date, symbol) rows are absent from the file
    frame["date"] = pd.DatetimeIndex(frame["date"]).strftime("%Y-%m-%d %H:%M:%S")
    frame = frame.sample(frac=1.0, random_state=0)  # a long file may come in any order
    path = tmp_path_factory.mktemp("minute") / "bars.csv"
    frame.to_csv(path, index=False)
    return path, panel


@pytest.fixture(scope="module")
def minute_panel(minute_csv):
    path, original = minute_csv
    return relcast.read_panel(path, original.meta), original


def test_reader_keeps_timestamps_and_skips_the_breaks(minute_panel):
    panel, original = minute_panel
    assert panel.num_dates == DAYS * BARS_PER_DAY
    np.testing.assert_array_equal(panel.dates, original.dates)
    np.testing.assert_array_equal(panel.mask, original.mask)
    np.testing.assert_allclose(panel.values, original.values, rtol=1e-6, equal_nan=True)
    assert panel.is_index.sum() == 1
    stamps = pd.DatetimeIndex(panel.dates)
    clock = stamps.hour * 60 + stamps.minute
    in_lunch = (clock > 11 * 60 + 30) & (clock < 13 * 60 + 1)
    assert not in_lunch.any() and clock.min() == 9 * 60 + 31 and clock.max() == 15 * 60
    gaps = np.diff(stamps.to_numpy()).astype("timedelta64[m]").astype(int)
    # per day: 238 one-minute steps, one 91-minute lunch gap; between days one overnight gap
    assert (gaps == 1).sum() == DAYS * 238 and (gaps == 91).sum() == DAYS
    assert ((gaps > 91) & (gaps >= 16 * 60)).sum() == DAYS - 1


def test_minute_of_session_across_lunch_and_night(minute_panel):
    panel, _ = minute_panel
    features = build_features(panel, train_end=400)
    assert "minute_of_session" in features.groups["calendar"]
    (k,) = features.columns(["minute_of_session"])
    stamps = pd.DatetimeIndex(panel.dates)
    clock = (stamps.hour * 60 + stamps.minute).to_numpy()
    first, last = 9 * 60 + 31, 15 * 60
    expected = (clock - first) / (last - first)  # (T,)
    values = features.values[..., k]  # (T, N), NaN where masked (e.g. indicator warm-up)
    assert features.mask.any(axis=1)[BARS_PER_DAY:].all()
    both = np.broadcast_to(expected[:, None], values.shape)
    np.testing.assert_allclose(values[features.mask], both[features.mask], atol=1e-6)
    got = np.nanmax(np.where(features.mask, values, np.nan), axis=1)[BARS_PER_DAY:]
    day = got.reshape(DAYS - 1, BARS_PER_DAY)  # days 1 and 2, after the warm-up
    assert (day[:, 0] == 0).all() and (day[:, -1] == pytest.approx(1.0))
    assert (np.diff(day, axis=1) > 0).all()  # rises through each day, restarts each morning
    # the last morning bar (11:30) and the first afternoon bar (13:01) are one bar apart
    # but 91 minutes apart on the clock
    assert day[0, 120] - day[0, 119] == pytest.approx(91 / (last - first), abs=1e-6)
    # the other calendar features are the day's: constant within a day
    (k,) = features.columns(["day_of_week"])
    dow = np.nanmax(np.where(features.mask, features.values[..., k], np.nan), axis=1)
    dow = dow[BARS_PER_DAY:].reshape(DAYS - 1, BARS_PER_DAY)
    assert (dow == dow[:, :1]).all() and dow[0, 0] != dow[1, 0]


def test_labels_count_bars_across_lunch_and_night(minute_panel):
    panel, _ = minute_panel
    labels = forward_returns(panel, H)  # (T, N, H)
    close = np.where(panel.mask, panel.field("close"), np.nan).astype(np.float64)
    lunch, evening = 119, BARS_PER_DAY - 1  # 11:30 and 15:00 of day 0
    assert pd.Timestamp(panel.dates[lunch + 1]).strftime("%H:%M") == "13:01"
    assert pd.Timestamp(panel.dates[evening + 1]).strftime("%d %H:%M") == "02 09:31"
    for t in (lunch - 1, lunch, evening - 2, evening):
        for h in range(1, H + 1):
            expected = close[t + h] / close[t] - 1.0  # h bars on, whatever the clock says
            np.testing.assert_allclose(labels[t, :, h - 1], expected, rtol=1e-5)
    # a label needs both bars: NaN where the stock is suspended at t + h or at t
    t, n = np.argwhere(~panel.mask[1:-H])[0] + [1, 0]
    assert np.isnan(labels[t - 1, n, 0]) and np.isnan(labels[t, n]).all()
    assert np.isnan(labels[-H:, :, H - 1]).all()  # runs off the end of the data


def test_split_embargo_in_bars(minute_panel):
    panel, _ = minute_panel
    split = chronological_split(panel.dates, 0.2, 0.2, embargo=H)
    labels = forward_returns(panel, H)
    # the last training label ends at train[-1] + H, strictly before the first valid bar
    assert split.train[-1] + H < split.valid[0] and split.valid[-1] + H < split.test[0]
    assert np.isfinite(labels[split.train[-1], panel.mask[split.train[-1] + H]]).all()


def test_stage1_and_stage3_fit_on_minute_bars(minute_panel, tmp_path):
    panel, _ = minute_panel
    split = chronological_split(panel.dates, 0.2, 0.2, embargo=H)
    features = build_features(panel, train_end=int(split.train[-1]), windows=(5, 10, 30))
    labels = forward_returns(panel, H)
    target = ~panel.is_index
    F_, N = features.values.shape[2], len(panel.symbols)
    config = Stage1Config(
        num_features=F_, num_stocks=N, horizons=H, d_model=16, num_heads=2,
        num_layers=1, relationship_dim=4, dropout=0.0,
    )  # fmt: skip
    stage1 = fit_stage1(
        features,
        labels,
        split,
        config,
        Stage1Spec(max_epochs=1, batch_dates=64),
        TrainerSpec(out_dir=tmp_path / "stage1", progress=False, accelerator="cpu"),
        target=target,
    )
    assert np.isfinite(stage1.history[-1]["val_rank_ic"])
    out = predict_stage1(stage1.model, features)
    assert out["relationship"].shape == (panel.num_dates, N, 4)
    rel_names = [f"rel_{k}" for k in range(4)]
    inputs = assemble_inputs(
        features, (out["relationship"], rel_names), "hybrid", sectors=panel.sectors
    )
    lookback = 30
    stage3 = fit_stage3(
        "tcn",
        inputs,
        labels,
        split,
        Stage3Spec(
            lookback=lookback,
            max_epochs=1,
            batch_size=512,
            hparams={"hidden_size": 8, "dropout": 0.0},
        ),
        TrainerSpec(out_dir=tmp_path / "stage3", progress=False),
        stocks=list(np.flatnonzero(target)),
    )
    assert np.isfinite(stage3.best_val_rank_ic)
    pred = predict_stage3(stage3, inputs, split.test)["point"]  # (T, N, H)
    test_ok = np.zeros(panel.num_dates, bool)
    test_ok[split.test] = True
    assert np.isfinite(pred[test_ok][inputs.valid[test_ok]]).mean() > 0.5
    assert np.isnan(pred[~test_ok]).all()

    # a Stage3 window is `lookback` bars: the one ending at 13:05 of day 2 starts before lunch
    day2 = 2 * BARS_PER_DAY
    end = day2 + 124  # 13:05
    assert pd.Timestamp(panel.dates[end]).strftime("%H:%M") == "13:05"
    loader = inputs.loader(lookback, index=[end], stocks=[0], rank=0, world_size=1)
    (batch,) = list(loader)
    window = batch["x"][0].numpy()  # (L, F_in)
    np.testing.assert_array_equal(window, inputs.values[end - lookback + 1 : end + 1, 0])
    start = pd.Timestamp(panel.dates[end - lookback + 1]).strftime("%H:%M")
    assert start == "11:06"  # 25 morning bars + 5 afternoon bars
