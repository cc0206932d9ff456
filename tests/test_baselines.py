"""Baselines as models (relcast.training.baselines): settings from the config, forecasts that
score like any other model's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from relcast.config import load_config
from relcast.features.factors import FACTORS, momentum
from relcast.features.splits import Split
from relcast.training.baselines import (
    DEFAULTS,
    LightgbmFit,
    baseline_predictions,
    lightgbm_scores,
    shuffle_within_dates,
)


def test_config_defaults_are_the_former_hard_coded_values():
    cfg = load_config(overrides=["baselines.num_leaves=7", "baselines.n_estimators=40"])
    assert cfg.baselines.num_leaves == 7 and cfg.baselines.n_estimators == 40
    default = load_config().baselines
    for key, value in vars(DEFAULTS).items():
        assert getattr(default, key) == value, key


def test_shuffle_keeps_each_dates_labels_and_mask():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 12))
    mask = rng.random((40, 12)) > 0.2
    out = shuffle_within_dates(y, mask, seed=1)
    assert np.isnan(out[~mask]).all()
    for t in range(40):  # the same values on the same date, in another order
        assert np.allclose(np.sort(out[t, mask[t]]), np.sort(y[t, mask[t]]))
    assert not np.allclose(out[mask], y[mask])


def test_momentum_is_the_past_return_without_look_ahead():
    close = np.cumprod(1 + np.full((30, 2), 0.01), axis=0)
    mask = np.ones((30, 2), bool)
    m = momentum(close, mask, window=5)
    assert np.isnan(m[:5]).all()
    assert m[10, 0] == pytest.approx(close[10, 0] / close[5, 0] - 1)
    changed = close.copy()
    changed[11:] *= 2  # the future changes: today's momentum does not
    assert momentum(changed, mask, window=5)[10, 0] == pytest.approx(m[10, 0])


def test_lightgbm_learns_a_planted_signal_and_the_shuffled_control_does_not():
    rng = np.random.default_rng(0)
    T, N = 200, 40
    x = rng.normal(size=(T, N, 3))
    y = x[..., 0] + 0.3 * rng.normal(size=(T, N))
    mask = np.ones((T, N), bool)
    split = Split(np.arange(0, 120), np.arange(125, 160), np.arange(165, T), 5,
                  np.arange(T).astype("datetime64[D]"))  # fmt: skip
    settings = SimpleNamespace(**{**vars(DEFAULTS), "n_estimators": 60})
    test = split.test
    pred = lightgbm_scores(x, y, mask, split, seed=0, settings=settings)
    assert np.corrcoef(pred[test].ravel(), y[test].ravel())[0, 1] > 0.8
    control = lightgbm_scores(x, shuffle_within_dates(y, mask, 1), mask, split, 0, settings)
    # 35 dates x 40 stocks = 1,400 test cells: noise correlation has sd ~ 0.03
    assert abs(np.corrcoef(control[test].ravel(), y[test].ravel())[0, 1]) < 0.12


def test_baseline_predictions_shapes_and_switch():
    T, N, H = 80, 6, 3
    rng = np.random.default_rng(1)
    close, mask = np.cumprod(1 + rng.normal(0, 0.01, (T, N)), axis=0), np.ones((T, N), bool)
    panel = SimpleNamespace(field=lambda name: close, mask=mask)
    features = SimpleNamespace(values=rng.normal(size=(T, N, 4)))
    split = Split(np.arange(0, 50), np.arange(52, 65), np.arange(67, T), 2,
                  np.arange(T).astype("datetime64[D]"))  # fmt: skip
    z1, cell = rng.normal(size=(T, N)), np.ones((T, N), bool)
    off = SimpleNamespace(**{**vars(DEFAULTS), "lightgbm": False})
    out = baseline_predictions(panel, features, LightgbmFit(z1, cell, split), H, off)
    assert list(out) == ["naive_zero", *FACTORS]  # every factor is on by default
    assert all(v.shape == (T, N, H) for v in out.values())
    assert np.array_equal(out["momentum_20d"][..., 0], out["momentum_20d"][..., 2],
                          equal_nan=True)  # fmt: skip
    np.testing.assert_array_equal(out["reversal_1d"][..., 0], -momentum(close, mask, 1))
    fewer = SimpleNamespace(**vars(off), reversal_5d=SimpleNamespace(enabled=False, window=5))
    out = baseline_predictions(panel, features, LightgbmFit(z1, cell, split), H, fewer)
    assert "reversal_5d" not in out and "reversal_1d" in out
