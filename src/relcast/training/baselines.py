"""Baselines: reference models that produce predictions ``[T, N, H]`` like any other model.

- ``naive_zero``: predicts 0 (the MSE reference; its IC is undefined),
- ``naive_momentum``: the past ``momentum_window``-bar return,
- ``lightgbm``: LightGBM regression on the raw features (horizon-1 z-scored labels),
- ``control_shuffled_lightgbm``: the same LightGBM fitted on labels shuffled across stocks
  within each date. Its IC must be near zero; if it is not, something leaks.

Settings come from the config's ``baselines:`` section (:class:`relcast.config.BaselineSettings`);
any object with the same attributes works. Scoring lives in :mod:`relcast.evaluation.scoring`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

# the values evaluation used before the baselines had a config section
DEFAULTS = SimpleNamespace(
    momentum_window=20,
    lightgbm=True,
    num_leaves=31,
    n_estimators=500,
    learning_rate=0.05,
    min_data_in_leaf=50,
    feature_fraction=0.8,
    bagging_fraction=0.8,
    early_stopping=30,
)


def lightgbm_scores(
    x: np.ndarray, y: np.ndarray, mask: np.ndarray, split, seed: int, settings: Any = DEFAULTS
) -> np.ndarray:
    """LightGBM regression of ``y [T, N]`` on ``x [T, N, F]``, fitted on the training dates
    (early stopping on the validation dates, cells where ``mask`` and ``y`` is finite);
    scores for every date ``[T, N]``."""
    import lightgbm as lgb

    def rows(index):
        sub = np.zeros_like(mask)
        sub[index] = mask[index]
        sub &= np.isfinite(y)
        return np.nonzero(sub)

    tr, va = rows(split.train), rows(split.valid)
    params = dict(
        objective="regression",
        learning_rate=settings.learning_rate,
        num_leaves=settings.num_leaves,
        min_data_in_leaf=settings.min_data_in_leaf,
        feature_fraction=settings.feature_fraction,
        bagging_fraction=settings.bagging_fraction,
        bagging_freq=1,
        seed=seed,
        verbose=-1,
        num_threads=2,
    )
    booster = lgb.train(
        params,
        lgb.Dataset(x[tr], y[tr]),
        num_boost_round=settings.n_estimators,
        valid_sets=[lgb.Dataset(x[va], y[va])],
        callbacks=[lgb.early_stopping(settings.early_stopping, verbose=False)],
    )
    T, N, F = x.shape
    return booster.predict(x.reshape(T * N, F), num_iteration=booster.best_iteration).reshape(T, N)


def shuffle_within_dates(y: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """Labels ``[T, N]`` permuted across valid stocks within each date (NaN elsewhere)."""
    rng = np.random.default_rng(seed)
    valid = mask & np.isfinite(y)
    keys = np.where(valid, rng.random(y.shape), np.inf)
    order = np.argsort(keys, axis=1)  # valid cells first, in random order
    sorted_valid = np.argsort(np.where(valid, 0, 1), axis=1, kind="stable")
    out = np.full_like(y, np.nan)
    rows = np.arange(y.shape[0])[:, None]
    out[rows, sorted_valid] = y[rows, order]
    out[~valid] = np.nan
    return out


def momentum(close: np.ndarray, mask: np.ndarray, window: int = 20) -> np.ndarray:
    """Past ``window``-bar return ``close[t] / close[t - window] - 1`` ``[T, N]`` (prices
    carried forward over masked cells; NaN for the first ``window`` dates)."""
    from relcast.features.indicators import ffill

    close = ffill(np.where(mask, close, np.nan))
    past = np.full_like(close, np.nan)
    past[window:] = close[window:] / close[:-window] - 1.0
    return past


def baseline_predictions(
    panel, features, z1: np.ndarray, cell: np.ndarray, split, horizons: int, seed: int,
    settings: Any = DEFAULTS,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Every baseline's forecast ``[T, N, H]`` (one score repeated over the horizons).

    ``z1 [T, N]``: horizon-1 labels z-scored across stocks (what LightGBM is fitted on);
    ``cell [T, N]``: the stocks scored (features present, indices excluded).
    """
    T, N, H = features.values.shape[0], features.values.shape[1], horizons

    def repeat(score: np.ndarray) -> np.ndarray:
        return np.repeat(score[..., None], H, axis=2)

    out = {
        "naive_zero": np.zeros((T, N, H), dtype=np.float32),
        "naive_momentum": repeat(
            momentum(panel.field("close"), panel.mask, settings.momentum_window)
        ),
    }
    if settings.lightgbm:
        raw = np.nan_to_num(features.values)
        out["lightgbm"] = repeat(lightgbm_scores(raw, z1, cell, split, seed, settings))
        shuffled = shuffle_within_dates(z1, cell, seed + 1)
        out["control_shuffled_lightgbm"] = repeat(
            lightgbm_scores(raw, shuffled, cell, split, seed, settings)
        )
    return out
