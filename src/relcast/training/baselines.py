"""Baselines: reference models that produce predictions ``[T, N, H]`` like any other model.

- ``naive_zero``: predicts 0 (the MSE reference; its IC is undefined),
- the factor baselines ``reversal_1d``, ``reversal_5d``, ``momentum_20d``,
  ``low_volatility_20d``, ``liquidity_20d`` (:mod:`relcast.features.factors`, each switched
  and windowed by ``baselines.<name>``),
- ``lightgbm``: LightGBM regression on the raw features (horizon-1 z-scored labels), fitted
  on at most ``max_rows`` (date, stock) rows of the training span (and as many of the
  validation span), a seeded uniform sample when there are more,
- ``control_shuffled_lightgbm``: the same LightGBM fitted on labels shuffled across stocks
  within each date. Its IC must be near zero; if it is not, something leaks.

Settings come from the config's ``baselines:`` section (:class:`relcast.config.BaselineSettings`);
any object with the same attributes works. Scoring lives in :mod:`relcast.evaluation.scoring`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from relcast.data.panel import release_pages
from relcast.features.factors import enabled_factors, factor_scores

BLOCK_CELLS = 2**22  # (date, stock) cells read at a time where a whole [T, N] is not needed

# the values evaluation used before the baselines had a config section
# (the factors' defaults are relcast.features.factors.FACTORS)
DEFAULTS = SimpleNamespace(
    lightgbm=True,
    num_leaves=31,
    n_estimators=500,
    learning_rate=0.05,
    min_data_in_leaf=50,
    feature_fraction=0.8,
    bagging_fraction=0.8,
    early_stopping=30,
    max_rows=2_000_000,
)


def lightgbm_scores(
    x: np.ndarray, y: np.ndarray, mask: np.ndarray, split, seed: int, settings: Any = DEFAULTS,
    dates: slice | None = None,
) -> np.ndarray:  # fmt: skip
    """LightGBM regression of ``y [T, N]`` on ``x [T, N, F]``, fitted on the training dates
    (early stopping on the validation dates, cells where ``mask`` and ``y`` is finite);
    scores for every date ``[T, N]``, or for the dates ``dates`` only (``[W, N]``)."""
    import lightgbm as lgb

    cap = int(getattr(settings, "max_rows", DEFAULTS.max_rows))
    tr, va = (
        sampled_cells(mask, y, split.train, cap, seed),
        sampled_cells(mask, y, split.valid, cap, seed),
    )
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
    train = lgb.Dataset(np.nan_to_num(x[tr]), y[tr])  # (rows, F): only the rows used are read
    valid = lgb.Dataset(np.nan_to_num(x[va]), y[va])
    # a memory-mapped x: the pages those rows touched leave RSS now (training holds the GIL,
    # so the store's pager thread cannot drop them while it runs)
    release_pages(x)
    booster = lgb.train(
        params,
        train,
        num_boost_round=settings.n_estimators,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(settings.early_stopping, verbose=False)],
    )
    T, N, F = x.shape
    lo, hi, _ = (dates or slice(0, T)).indices(T)
    out = np.empty((hi - lo, N))
    step = max(1, cap // max(1, N))  # dates per prediction block: at most ``cap`` rows
    for a in range(lo, hi, step):  # each row's score is its own: blocks change no value
        b = min(a + step, hi)
        block = np.nan_to_num(x[a:b]).reshape(-1, F)
        release_pages(x)
        predicted = booster.predict(block, num_iteration=booster.best_iteration)
        out[a - lo : b - lo] = predicted.reshape(-1, N)
    return out


def sampled_cells(
    mask: np.ndarray, y: np.ndarray, index: np.ndarray, cap: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``sample_rows(np.nonzero(mask & isfinite(y) on the dates index), cap, seed)``, found
    by blocks of dates: no ``[T, N]`` mask and no index arrays of every cell (the same
    cells, in the same order, drawn with the same random numbers)."""
    days = np.unique(np.asarray(index, dtype=np.int64))  # (D,) the dates, in order
    N = mask.shape[1]
    step = max(1, BLOCK_CELLS // max(1, N))

    def blocks():
        for a in range(0, len(days), step):
            d = days[a : a + step]
            yield d, np.asarray(mask[d]) & np.isfinite(y[d])  # (d, N)

    counts = np.concatenate([[0], *(ok.sum(axis=1) for _, ok in blocks())]).astype(np.int64)
    pick = _sample_positions(int(counts.sum()), cap, seed)  # among all cells, (date, stock)
    ends = np.cumsum(counts)  # cells before each block's dates
    t_parts, n_parts, done = [], [], 0
    for d, ok in blocks():
        t, n = np.nonzero(ok)
        first = ends[done]  # the cells before this block
        done += len(d)
        if pick is not None:
            local = pick[(pick >= first) & (pick < first + len(t))] - first
            t, n = t[local], n[local]
        t_parts.append(d[t])
        n_parts.append(n)
    if not t_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(t_parts), np.concatenate(n_parts)


def sample_rows(rows: tuple[np.ndarray, ...], cap: int, seed: int) -> tuple[np.ndarray, ...]:
    """At most ``cap`` of the ``(t, n)`` cells ``rows`` (a uniform sample without replacement,
    seeded, kept in date order); all of them when there are no more than ``cap``."""
    pick = _sample_positions(len(rows[0]), cap, seed)
    return rows if pick is None else tuple(r[pick] for r in rows)


def _sample_positions(total: int, cap: int, seed: int) -> np.ndarray | None:
    """``cap`` sorted positions of ``total`` drawn without replacement (seeded); None (keep
    all) when there are no more than ``cap``. The one draw both samplers make."""
    if total <= cap:
        return None
    return np.sort(np.random.default_rng(seed).choice(total, cap, replace=False))


def shuffle_within_dates(y: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """Labels ``[T, N]`` permuted across valid stocks within each date (NaN elsewhere)."""
    rng = np.random.default_rng(seed)
    out = np.full_like(y, np.nan)
    step = max(1, 2**22 // max(1, y.shape[1]))  # dates per block: the same random stream
    for a in range(0, len(y), step):
        yb, valid = y[a : a + step], mask[a : a + step] & np.isfinite(y[a : a + step])
        keys = np.where(valid, rng.random(yb.shape), np.inf)
        order = np.argsort(keys, axis=1)  # valid cells first, in random order
        sorted_valid = np.argsort(np.where(valid, 0, 1), axis=1, kind="stable")
        rows = np.arange(len(yb))[:, None]
        block = out[a : a + step]
        block[rows, sorted_valid] = yb[rows, order]
        block[~valid] = np.nan
    return out


@dataclass(frozen=True)
class LightgbmFit:
    """What LightGBM (and its shuffled control) is fitted on: ``z1 [T', N]``, horizon-1
    labels z-scored across stocks, of the first ``T' <= T`` dates (up to the last
    validation date is enough); ``cell [T, N]``, the stocks scored (features present,
    indices excluded); the ``split`` (train, early stopping on valid); the ``seed``."""

    z1: Any
    cell: Any
    split: Any
    seed: int = 0


def baseline_predictions(
    panel, features, fit: LightgbmFit, horizons: int, settings: Any = DEFAULTS,
    dates: slice | None = None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Every baseline's forecast ``[T, N, H]`` (one score repeated over the horizons), or
    ``[W, N, H]`` over the dates ``dates`` only (the same values: no ``[T, N]`` forecast).
    The factors read the panel; LightGBM is fitted as ``fit`` says (:class:`LightgbmFit`)."""
    z1, cell, split, seed = fit.z1, fit.cell, fit.split, fit.seed
    T, N, H = features.values.shape[0], features.values.shape[1], horizons
    lo, hi, _ = (dates or slice(0, T)).indices(T)

    def repeat(score: np.ndarray) -> np.ndarray:
        return np.repeat(score[..., None], H, axis=2)

    out = {"naive_zero": np.zeros((hi - lo, N, H), dtype=np.float32)}
    for name, factor in enabled_factors(settings).items():
        try:
            out[name] = repeat(factor_scores(panel, factor, slice(lo, hi)))
        except KeyError:  # a panel without volume has no liquidity factor
            continue
    if settings.lightgbm:  # NaN -> 0 on the rows read (features.values may be a memory map)
        raw, window = features.values, slice(lo, hi)
        out["lightgbm"] = repeat(lightgbm_scores(raw, z1, cell, split, seed, settings, window))
        shuffled = shuffle_within_dates(z1, cell[: len(z1)], seed + 1)
        out["control_shuffled_lightgbm"] = repeat(
            lightgbm_scores(raw, shuffled, cell, split, seed, settings, window)
        )
        del shuffled
    return out
