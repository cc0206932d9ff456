"""Neighbour features: what the stocks a stock attends to are doing, weighted by Stage1.

V2's embeddings turn out to be re-encodings of the stock's own indicators (on the NASDAQ
benchmark their Rank IC vanishes once the own columns are regressed out of them date by
date: ``benchmarks/relationship_columns.py``), so Stage3 learns nothing from them that own
history does not already say. The relational models of the field (RSR, StockMixer) instead
pass *other* stocks' information to each stock along learned edges. This extractor does that
with Stage1's attention: for stock i at date t,

    nbr_<f>[t, i] = sum_j A[t, i, j] * x_f[t, j] / sum_j A[t, i, j]      (j != i, j valid)

with ``A`` the head-averaged attention of Stage1's last layer at date t (where stock i looks)
and ``x_f`` the own indicator f of every stock at t (the same date: no look-ahead, the
attention itself reads only date t's features). The stock itself and masked stocks are left
out and the remaining weights renormalised, so a column is a weighted average of the peers'
values in the indicator's own units.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from relcast.models.extractors import (
    RelationshipExtractor,
    check_dates_index,
    masked_features,
    stage1_outputs,
)

DATES_PER_BLOCK = 64
"""Dates per Stage1 pass: the attention of a block is ``64 x N x N`` floats (270 MB at 1,026
stocks), whatever the span."""


class NeighbourExtractor(RelationshipExtractor):
    """Attention-weighted averages of the other stocks' own indicators (``nbr_<name>``).

    Args:
        columns: own-indicator names to average (default every column of the ``own`` group).
        layer: which encoder layer's attention (default the last).
    """

    def __init__(self, columns: Sequence[str] | None = None, layer: int = -1) -> None:
        self.columns = None if columns is None else list(columns)
        self.layer = layer

    def extract(self, model, features, dates_index=None):
        """``[T', N, F]`` neighbour averages (rows of masked stocks are NaN)."""
        idx = check_dates_index(features, dates_index)
        names = self.columns or list(features.groups["own"])
        own = np.nan_to_num(features.values[..., features.columns(names)])  # (T, N, F)
        N = len(features.symbols)
        out = np.empty((len(idx), N, len(names)), dtype=np.float32)
        not_self = ~np.eye(N, dtype=bool)
        for start in range(0, len(idx), DATES_PER_BLOCK):
            block = idx[start : start + DATES_PER_BLOCK]
            att = stage1_outputs(model, features, block, need_weights=True)["attention"]
            att = att[:, self.layer].astype(np.float64)  # (D, N, N) row i: where i looks
            keep = not_self[None] & features.mask[block][:, None, :]  # (D, N, N)
            weights = np.where(keep, att, 0.0)
            total = weights.sum(-1, keepdims=True)  # (D, N, 1)
            weights /= np.where(total > 0, total, 1.0)
            out[start : start + len(block)] = np.einsum("dij,djf->dif", weights, own[block])
        return masked_features(features, idx, [f"nbr_{n}" for n in names], out)
