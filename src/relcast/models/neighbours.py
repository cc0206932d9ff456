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

Two more extractors read the peers along the same weights (the stock itself left out):

- :class:`LeaveSelfOutExtractor` (``lso_<k>``): the peers' Stage1 relationship vectors
  (the ``relationship_dim`` bottleneck), i.e. what the attention reads from the *other*
  stocks only. (The peers' vectors were themselves computed with attention over every stock,
  the stock included: the exclusion is of its own token, not of second-order echoes.)
- :class:`LeadLagExtractor` (``ll_<column>_lag<l>``): the peers' own return ``column``
  (``ret1``: the day's return, scaled on the training span) on date ``t - l`` weighted by
  the attention at ``t``, for ``l = 0 .. lags - 1``: yesterday's market read through today's
  relations, for a label that starts after ``t``. Peers not traded on ``t - l`` are left out.

:class:`OrthogonalExtractor` (``relationships.orthogonal``) wraps any extractor and removes
from its columns their least-squares fit on the stock's own columns (with an intercept),
fitted on training dates only and applied date by date, so what is left is what own history
does not linearly say.
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


class PeerExtractor(RelationshipExtractor):
    """Base of the extractors that read the peers along Stage1's attention. Several of them
    side by side (:class:`~relcast.models.extractors.CombinedExtractor`) share one Stage1
    pass per block of dates (:meth:`extract_group`): the attention pass is their cost."""

    layer = -1

    def names(self, model, features) -> list[str]:
        raise NotImplementedError

    def block_values(self, features, block, weights, outputs) -> np.ndarray:
        """``[D, N, K]`` for the dates ``block`` from :func:`peer_weights` and the block's
        Stage1 outputs."""
        raise NotImplementedError

    def extract(self, model, features, dates_index=None):
        return self.extract_group([self], model, features, dates_index)[0]

    @staticmethod
    def extract_group(extractors, model, features, dates_index=None) -> list:
        """Each of ``extractors``' features, from one Stage1 pass per block of dates."""
        idx = check_dates_index(features, dates_index)
        N = len(features.symbols)
        names = [e.names(model, features) for e in extractors]
        values = [np.empty((len(idx), N, len(n)), dtype=np.float32) for n in names]
        for start in range(0, len(idx), DATES_PER_BLOCK):
            block = idx[start : start + DATES_PER_BLOCK]
            out = stage1_outputs(model, features, block, need_weights=True)
            weights = {
                layer: peer_weights(out["attention"][:, layer], features.mask[block])
                for layer in {e.layer for e in extractors}
            }
            for e, v in zip(extractors, values, strict=True):
                w = weights[e.layer]
                v[start : start + len(block)] = e.block_values(features, block, w, out)
        return [masked_features(features, idx, n, v) for n, v in zip(names, values, strict=True)]


class NeighbourExtractor(PeerExtractor):
    """Attention-weighted averages of the other stocks' own indicators (``nbr_<name>``).

    Args:
        columns: own-indicator names to average (default every column of the ``own`` group).
        layer: which encoder layer's attention (default the last).
    """

    def __init__(self, columns: Sequence[str] | None = None, layer: int = -1) -> None:
        self.columns = None if columns is None else list(columns)
        self.layer = layer

    def own_columns(self, features) -> list[str]:
        return self.columns or list(features.groups["own"])

    def names(self, model, features) -> list[str]:
        return [f"nbr_{n}" for n in self.own_columns(features)]

    def block_values(self, features, block, weights, outputs):
        cols = features.columns(self.own_columns(features))
        own = np.nan_to_num(np.asarray(features.values[block])[..., cols])  # (D, N, F)
        return np.einsum("dij,djf->dif", weights, own)


def peer_weights(attention: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``attention [D, N, N]`` (row i: where stock i looks) with the stock itself and the
    keys not ``valid [D, N]`` left out and each row renormalised to sum to 1 (a row with no
    peer left stays 0)."""
    N = attention.shape[-1]
    keep = ~np.eye(N, dtype=bool)[None] & np.asarray(valid, dtype=bool)[:, None, :]
    weights = np.where(keep, attention.astype(np.float64), 0.0)
    total = weights.sum(-1, keepdims=True)  # (D, N, 1)
    return weights / np.where(total > 0, total, 1.0)


class LeaveSelfOutExtractor(PeerExtractor):
    """``lso_<k>``: the other stocks' Stage1 relationship vectors averaged along the stock's
    attention (itself and masked stocks left out): what Stage1 reads from its peers only."""

    def __init__(self, layer: int = -1) -> None:
        self.layer = layer

    def names(self, model, features) -> list[str]:
        return [f"lso_{k}" for k in range(model.config.relationship_dim)]

    def block_values(self, features, block, weights, outputs):
        rel = np.nan_to_num(outputs["relationship"].astype(np.float64))  # (D, N, K)
        return np.einsum("dij,djk->dik", weights, rel)


class LeadLagExtractor(PeerExtractor):
    """``ll_<column>_lag<l>``: the peers' own ``column`` on date ``t - l`` weighted by
    Stage1's attention at ``t`` (itself left out; a peer counts when it traded on both
    dates), ``l = 0 .. lags - 1``."""

    def __init__(self, lags: int = 3, column: str = "ret1", layer: int = -1) -> None:
        if lags < 1:
            raise ValueError(f"lead_lag needs lags >= 1, got {lags}")
        self.lags, self.column, self.layer = lags, column, layer

    def names(self, model, features) -> list[str]:
        if self.column not in features.names:
            raise ValueError(f"lead_lag reads the own column {self.column!r}: not in features")
        return [f"ll_{self.column}_lag{lag}" for lag in range(self.lags)]

    def block_values(self, features, block, weights, outputs):
        col = features.columns([self.column])[0]
        mask = np.asarray(features.mask, dtype=bool)
        out = np.zeros((len(block), mask.shape[1], self.lags), dtype=np.float64)
        for lag in range(self.lags):
            past = block - lag  # (D,)
            ok = past >= 0
            then = np.zeros((len(block), mask.shape[1]), dtype=bool)
            then[ok] = mask[past[ok]]  # peers traded on t - l
            w = weights * then[:, None, :]
            total = w.sum(-1, keepdims=True)
            w = w / np.where(total > 0, total, 1.0)
            values = np.zeros(then.shape, dtype=np.float64)
            values[ok] = np.nan_to_num(np.asarray(features.values[past[ok]])[..., col])
            out[:, :, lag] = np.einsum("dij,dj->di", w, values)
        return out


class OrthogonalExtractor(RelationshipExtractor):
    """``orth_<column>``: ``base``'s columns minus their least-squares fit on the stock's own
    columns (and an intercept), the fit pooled over at most ``max_dates`` training dates
    (evenly spaced) and applied date by date.

    Args:
        base: the extractor whose columns are orthogonalised.
        max_dates: training dates the fit reads (each needs a Stage1 pass).
        ridge: relative ridge on the normal equations (own columns are collinear).
    """

    def __init__(self, base: RelationshipExtractor, max_dates: int = 250, ridge: float = 1e-6):
        self.base, self.max_dates, self.ridge = base, max_dates, ridge

    @staticmethod
    def own(features, idx: np.ndarray) -> np.ndarray:
        """``[T', N, F + 1]``: the own columns at ``idx`` (NaN as 0) and a constant."""
        own = features.values[idx][..., features.columns(list(features.groups["own"]))]
        own = np.nan_to_num(np.asarray(own, dtype=np.float64))
        return np.concatenate([own, np.ones((*own.shape[:2], 1))], axis=-1)

    def fit(self, model, features, labels, split, **kwargs):
        self.base.fit(model, features, labels, split, **kwargs)
        train = np.sort(np.asarray(split.train, dtype=np.int64))
        if len(train) > self.max_dates:
            train = train[np.linspace(0, len(train) - 1, self.max_dates).round().astype(int)]
        rel = self.base.extract(model, features, train)
        x = self.own(features, train)  # (D, N, F + 1)
        cells = rel.mask & features.mask[train]
        X, Y = x[cells], np.asarray(rel.values[cells], dtype=np.float64)
        if not len(X):
            raise ValueError("orthogonal: no traded stock on the training dates to fit on")
        gram = X.T @ X
        gram += self.ridge * np.trace(gram) / len(gram) * np.eye(len(gram))
        self.coef_ = np.linalg.solve(gram, X.T @ np.nan_to_num(Y))  # (F + 1, K)
        return self

    def fitted_state(self) -> dict[str, np.ndarray]:
        state = {f"base/{k}": v for k, v in self.base.fitted_state().items()}
        if hasattr(self, "coef_"):
            state["coef_"] = np.asarray(self.coef_)
        return state

    def load_fitted_state(self, state: dict[str, np.ndarray]) -> OrthogonalExtractor:
        if "coef_" not in state:
            raise ValueError("the saved orthogonal state lacks its fit (coef_)")
        self.coef_ = np.asarray(state["coef_"], dtype=np.float64)
        self.base.load_fitted_state(
            {k[len("base/") :]: v for k, v in state.items() if k.startswith("base/")}
        )
        return self

    def extract(self, model, features, dates_index=None):
        if not hasattr(self, "coef_"):
            raise RuntimeError("OrthogonalExtractor is not fitted: call fit first")
        idx = check_dates_index(features, dates_index)
        rel = self.base.extract(model, features, idx)
        x = self.own(features, idx)
        if x.shape[-1] != self.coef_.shape[0]:
            raise ValueError(
                f"orthogonal was fitted on {self.coef_.shape[0] - 1} own columns, the features "
                f"have {x.shape[-1] - 1}"
            )
        values = np.asarray(rel.values, dtype=np.float64) - x @ self.coef_
        names = [f"orth_{n}" for n in rel.names]
        return masked_features(features, idx, names, values)
