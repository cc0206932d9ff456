"""Industry-relative own features (``data.industry_relative``): the cheap relational baseline.

A stock's industry (the universe file's ``sector`` column, e.g. the 112 NASDAQ industries of
``rsr_nasdaq_industry.csv``) says which stocks move together. Two kinds of column, group
``"industry"``, computed from the normalised ``own`` columns at each date over the stocks
whose features are defined (``FeatureSet.mask``) only:

- ``ind_rel_<name>``: the stock's own indicator minus its industry's mean that date;
- ``ind_mean_<ret>``: its industry's mean of each own return column (``ret1``, ``ret5``, ...):
  how the industry moved over the last days.

A stock without an industry (an empty sector, ``unknown`` or ``n/a``: funds and ETFs in the
NASDAQ file) is in no industry's mean and gets 0 (the cross-sectional centre) in every
column. Every column at date t reads date t's own columns only, which read bars up to t.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from relcast.features.featureset import FeatureSet

NO_INDUSTRY = ("", "unknown", "n/a", "nan", "none")
"""Sector labels that mean "no industry" (compared lower-case, stripped)."""
GROUP = "industry"


def industry_codes(sectors: Sequence | np.ndarray) -> np.ndarray:
    """``int [N]``: the industry of each stock as 0..K-1 (sorted labels), -1 for none."""
    labels = np.array([str(s).strip() for s in np.asarray(sectors).astype(str)], dtype=object)
    none = np.array([s.lower() in NO_INDUSTRY for s in labels], dtype=bool)
    codes = np.full(len(labels), -1, dtype=np.int64)
    if (~none).any():
        _, codes[~none] = np.unique(labels[~none].astype(str), return_inverse=True)
    return codes


def industry_means(values: np.ndarray, valid: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``float32 [T, N, F]``: the mean of ``values [T, N, F]`` over the ``valid [T, N]`` stocks
    of each stock's industry at each date; NaN for a stock without an industry (code -1) or
    whose industry has no valid stock that date."""
    T, N, F = values.shape
    K = int(codes.max()) + 1 if len(codes) and codes.max() >= 0 else 0
    out = np.full((T, N, F), np.nan, dtype=np.float32)
    if K == 0:
        return out
    member = np.zeros((N, K), dtype=np.float64)  # (N, K) one-hot industry membership
    has = codes >= 0
    member[np.flatnonzero(has), codes[has]] = 1.0
    w = np.asarray(valid, dtype=np.float64)  # (T, N)
    x = np.where(valid[..., None], values, 0.0).astype(np.float64)  # (T, N, F)
    sums = np.einsum("tnf,nk->tkf", x, member, optimize=True)  # (T, K, F)
    counts = w @ member  # (T, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[..., None]  # (T, K, F), NaN where an industry has no stock
    out[:, has] = means[:, codes[has]]
    return out


def add_industry_features(
    features: FeatureSet, sectors: Sequence | np.ndarray, return_prefix: str = "ret"
) -> FeatureSet:
    """``features`` with the group ``"industry"`` appended (see the module docstring).

    Args:
        features: a feature set with an ``own`` group (normalised per date).
        sectors: the sector (industry) label of every symbol, e.g. ``panel.sectors``.
        return_prefix: own columns named ``<prefix><digits>`` are the return columns whose
            industry means are added.
    """
    T, N, _ = features.values.shape
    codes = industry_codes(sectors)
    if len(codes) != N:
        raise ValueError(f"sectors has {len(codes)} entries, expected {N} symbols")
    own_names = list(features.groups.get("own", []))
    if not own_names:
        raise ValueError("industry features need the feature set's 'own' group")
    cut = len(return_prefix)
    returns = [n for n in own_names if n.startswith(return_prefix) and n[cut:].isdigit()]
    own = features.values[:, :, features.columns(own_names)]  # (T, N, F_own)
    valid = np.asarray(features.mask, dtype=bool)
    means = industry_means(own, valid, codes)  # (T, N, F_own)
    ret_cols = [own_names.index(n) for n in returns]
    relative = own - means  # (T, N, F_own)
    block = np.concatenate([relative, means[:, :, ret_cols]], axis=2)  # (T, N, F_ind)
    block = np.where(np.isnan(means).all(axis=2, keepdims=True) & valid[..., None], 0.0, block)
    block[~valid] = np.nan
    names = [f"ind_rel_{n}" for n in own_names] + [f"ind_mean_{n}" for n in returns]
    groups = {**features.groups, GROUP: names}
    return FeatureSet(
        dates=features.dates,
        symbols=features.symbols,
        names=list(features.names) + names,
        values=np.concatenate([features.values, block.astype(np.float32)], axis=2),
        mask=features.mask,
        groups=groups,
    )
