"""Relationship feature extractors: the bridge from Stage1 to Stage3.

Every extractor has the same two verbs (sklearn style):

- ``fit(model, features, labels, split, ...)`` learns whatever the extractor needs from the
  *training span* only (PCA components for V2-PCA, the contrastive encoder for V3; V1 and
  V2-bottleneck have nothing to learn and return ``self``).
- ``extract(model, features, dates_index=None) -> RelationshipFeatures`` gives ``[T', N, K]``
  relationship features for the requested dates (all dates by default).

``model`` is a trained Stage1 :class:`~relcast.models.cross_sectional.CrossSectionalTransformer`.

This module holds the parts that learn nothing by gradient (V1, V2) and V3's pieces: its
encoder, loss and positive pairs. The V3 estimator, whose ``fit`` is a training loop, is
:class:`relcast.training.contrastive.ContrastiveExtractor`; the factory by name is
:func:`relcast.relationships.store.make_extractor`.

=========  ====================================================  ============================
version    what                                                  columns
=========  ====================================================  ============================
V1         head-averaged attention row of each stock             ``attn_<SYMBOL>`` x N,
                                                                 ``attention_to_index``,
                                                                 ``attention_to_sector``
V2         Stage1's learned bottleneck or PCA (training span)    ``rel_emb_<k>``
V3         own encoder trained with InfoNCE (sector / corr)      ``ctr_<k>``, ``ctr_sim_<SYMBOL>``
           (:mod:`relcast.training.contrastive`)
V1+V2      :class:`CombinedExtractor`                            both
score      Stage1's own forecast (``relationships.stage1_score``)  ``stage1_score_h1``
=========  ====================================================  ============================
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from relcast.features.featureset import FeatureSet
from relcast.models.cross_sectional import predict_stage1


@dataclass(eq=False)
class RelationshipFeatures:
    """Relationship features of N stocks over T' dates.

    Attributes:
        dates: ``datetime64[ns] [T']``.
        symbols: ``str [N]``.
        names: the K column names.
        values: ``float32 [T', N, K]``, finite where ``mask`` (NaN elsewhere).
        mask: ``bool [T', N]``.
    """

    dates: np.ndarray
    symbols: np.ndarray
    names: list[str]
    values: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        T, N, K = self.values.shape
        if (len(self.dates), len(self.symbols), len(self.names)) != (T, N, K):
            raise ValueError(
                f"values {self.values.shape} does not match dates/symbols/names "
                f"({len(self.dates)}, {len(self.symbols)}, {len(self.names)})"
            )
        if self.mask.shape != (T, N):
            raise ValueError(f"mask has shape {self.mask.shape}, expected {(T, N)}")

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per valid (date, symbol), columns ``date, symbol, *names``."""
        t, n = np.nonzero(self.mask)
        frame = pd.DataFrame({"date": self.dates[t], "symbol": self.symbols[n]})
        cols = pd.DataFrame(self.values[t, n], columns=self.names, index=frame.index)
        return pd.concat([frame, cols], axis=1)

    @staticmethod
    def concat(parts: Sequence[RelationshipFeatures]) -> RelationshipFeatures:
        """Column-wise concatenation of features over the same dates and symbols."""
        first = parts[0]
        for p in parts[1:]:
            if not (
                np.array_equal(p.dates, first.dates) and np.array_equal(p.symbols, first.symbols)
            ):
                raise ValueError(
                    "can only combine relationship features over the same dates/symbols"
                )
        names = [n for p in parts for n in p.names]
        if len(set(names)) != len(names):
            raise ValueError("combined extractors produce duplicate column names")
        mask = np.logical_and.reduce([p.mask for p in parts])
        values = np.concatenate([p.values for p in parts], axis=-1)
        values[~mask] = np.nan
        return RelationshipFeatures(first.dates, first.symbols, names, values, mask)


def check_dates_index(features: FeatureSet, dates_index: np.ndarray | None) -> np.ndarray:
    """The requested date positions (all dates for ``None``), checked against the features."""
    T = len(features.dates)
    idx = np.arange(T) if dates_index is None else np.asarray(dates_index, dtype=int)
    if idx.size and (idx.min() < 0 or idx.max() >= T):
        raise IndexError(f"dates_index out of range for {T} dates")
    return idx


def stage1_outputs(
    model: nn.Module,
    features: FeatureSet,
    dates_index: np.ndarray,
    need_weights: bool = False,
    outputs: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Stage1's outputs (numpy) for the given dates, via the one prediction path.

    With ``need_weights``, ``attention`` is head-averaged: ``[T', layers, N, N]``;
    ``outputs`` keeps only those outputs (None: all).
    """
    if model is None:
        raise ValueError("this extractor reads Stage1's outputs: pass the trained Stage1 model")
    return predict_stage1(
        model, features, dates_index=dates_index, need_weights=need_weights, average_heads=True,
        outputs=outputs,
    )  # fmt: skip


def masked_features(
    features: FeatureSet, idx: np.ndarray, names: list[str], values: np.ndarray
) -> RelationshipFeatures:
    """``values [T', N, K]`` of dates ``idx`` as features, NaN where the stock is masked."""
    mask = features.mask[idx]
    values = values.astype(np.float32, copy=False)
    values[~mask] = np.nan
    return RelationshipFeatures(features.dates[idx], features.symbols, names, values, mask)


class RelationshipExtractor:
    """Base class: ``fit`` (default: nothing to learn) and ``extract``."""

    def fit(self, model: nn.Module, features: FeatureSet, labels: np.ndarray, split: Any, **kwargs):
        """Learn from the training span (``split.train``); default: nothing to learn."""
        return self

    def extract(
        self, model: nn.Module, features: FeatureSet, dates_index: np.ndarray | None = None
    ) -> RelationshipFeatures:
        raise NotImplementedError

    def clone(self) -> RelationshipExtractor:
        """An unfitted copy with the same parameters (one per Stage1 model in the OOF store)."""
        return copy.deepcopy(self)

    def fitted_state(self) -> dict[str, np.ndarray]:
        """What ``fit`` learned, as named arrays (a run folder keeps them as safetensors, so
        ``relcast predict``/``update`` never fit again); ``{}`` when there is nothing to learn."""
        return {}

    def load_fitted_state(self, state: dict[str, np.ndarray]) -> RelationshipExtractor:
        """This extractor as ``fit`` left it, from :meth:`fitted_state`'s arrays."""
        if state:
            raise ValueError(
                f"{type(self).__name__} learns nothing, but the saved state holds {sorted(state)}"
            )
        return self


# ----------------------------------------------------------------------------- V1
class AttentionExtractor(RelationshipExtractor):
    """V1: each stock's head-averaged attention row over all stocks, plus two summaries.

    Args:
        is_index: ``bool [N]``, which columns are market indices (for ``attention_to_index``);
            all False gives 0 for that column.
        sector_ids: ``int [N]``; default the Stage1 model's own ``sector_ids`` buffer.
        layer: which encoder layer's attention (default the last).
    """

    def __init__(
        self,
        is_index: np.ndarray | None = None,
        sector_ids: np.ndarray | None = None,
        layer: int = -1,
    ) -> None:
        self.is_index = is_index
        self.sector_ids = sector_ids
        self.layer = layer

    def extract(self, model, features, dates_index=None):
        """``[T', N, N + 2]`` attention features (rows of masked stocks are NaN)."""
        idx = check_dates_index(features, dates_index)
        N = len(features.symbols)
        # Chunks of dates: attention of every layer is [T', layers, N, N] in memory.
        att = np.concatenate(
            [
                stage1_outputs(model, features, chunk, need_weights=True)["attention"][
                    :, self.layer
                ]
                for chunk in np.array_split(idx, max(1, int(np.ceil(len(idx) / 256))))
            ]
        ).astype(np.float32)  # (T', N, N), row i = where stock i looks, averaged over heads
        is_index = np.zeros(N, bool) if self.is_index is None else np.asarray(self.is_index, bool)
        sectors = self.sector_ids
        if sectors is None:
            sectors = model.sector_ids.detach().cpu().numpy()
        sectors = np.asarray(sectors)
        if is_index.shape != (N,) or sectors.shape != (N,):
            raise ValueError(f"is_index and sector_ids must have shape ({N},)")

        valid = features.mask[idx]  # (T', N)
        idx_cols = is_index[None, :] & valid  # (T', N) valid index keys
        to_index = (att * idx_cols[:, None, :]).sum(-1) / np.maximum(idx_cols.sum(-1), 1)[:, None]
        same = (sectors[:, None] == sectors[None, :]) & ~np.eye(N, dtype=bool)  # (N, N)
        peers = same[None] & valid[:, None, :]  # (T', N, N)
        to_sector = (att * peers).sum(-1) / np.maximum(peers.sum(-1), 1)  # (T', N)
        values = np.concatenate([att, to_index[..., None], to_sector[..., None]], axis=-1)
        names = [f"attn_{s}" for s in features.symbols] + [
            "attention_to_index",
            "attention_to_sector",
        ]
        return masked_features(features, idx, names, values)


# ----------------------------------------------------------------------------- V2
class EmbeddingExtractor(RelationshipExtractor):
    """V2: a learned low-dimensional view of each stock's Stage1 embedding.

    Args:
        method: ``"bottleneck"`` reads Stage1's ``relationship`` output (trained inside
            Stage1, ``relationship_dim`` columns); ``"pca"`` projects the ``embeddings`` onto
            principal components fitted on the training span's dates only.
        n_components: PCA dimensions (16-64 in the presets).
    """

    def __init__(self, method: str = "bottleneck", n_components: int = 16) -> None:
        if method not in ("bottleneck", "pca"):
            raise ValueError(f"method must be 'bottleneck' or 'pca', got {method!r}")
        self.method = method
        self.n_components = n_components

    def fit(self, model, features, labels, split, **kwargs):
        """PCA: fit mean and components on Stage1 embeddings of ``split.train`` dates."""
        if self.method == "bottleneck":
            return self
        train = np.asarray(split.train)
        emb = stage1_outputs(model, features, train)["embeddings"]  # (T_tr, N, d)
        rows = emb[features.mask[train]].astype(np.float64)  # (cells, d)
        k = min(self.n_components, rows.shape[1], rows.shape[0])
        self.mean_ = rows.mean(axis=0)
        _, s, vt = np.linalg.svd(rows - self.mean_, full_matrices=False)
        # Deterministic sign: the largest-|loading| entry of each component is positive.
        signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
        self.components_ = (vt * signs[:, None])[:k]  # (k, d)
        self.explained_variance_ratio_ = (s[:k] ** 2) / max((s**2).sum(), 1e-12)
        return self

    FITTED = ("mean_", "components_", "explained_variance_ratio_")

    def fitted_state(self) -> dict[str, np.ndarray]:
        if self.method == "bottleneck" or not hasattr(self, "components_"):
            return {}
        return {name: np.asarray(getattr(self, name)) for name in self.FITTED}

    def load_fitted_state(self, state: dict[str, np.ndarray]) -> EmbeddingExtractor:
        if self.method == "bottleneck":
            return super().load_fitted_state(state)
        missing = [name for name in self.FITTED if name not in state]
        if missing:
            raise ValueError(f"the saved PCA state lacks {missing}")
        for name in self.FITTED:
            setattr(self, name, np.asarray(state[name]))
        return self

    def extract(self, model, features, dates_index=None):
        """``[T', N, K]`` with K = relationship_dim (bottleneck) or n_components (PCA)."""
        idx = check_dates_index(features, dates_index)
        out = stage1_outputs(model, features, idx)
        if self.method == "bottleneck":
            values = np.asarray(out["relationship"])  # (T', N, relationship_dim)
        else:
            if not hasattr(self, "components_"):
                raise RuntimeError("EmbeddingExtractor(method='pca') is not fitted: call fit first")
            emb = np.asarray(out["embeddings"], dtype=np.float64)  # (T', N, d)
            values = (emb - self.mean_) @ self.components_.T  # (T', N, k)
        names = [f"rel_emb_{k}" for k in range(values.shape[-1])]
        return masked_features(features, idx, names, values)


# ----------------------------------------------------------------------------- V3
class ContrastiveEncoder(nn.Module):
    """MLP from a stock's input vector (+ a learned identity embedding) to a unit vector."""

    def __init__(
        self, num_inputs: int, num_stocks: int, hidden: int, proj_dim: int, identity_dim: int
    ) -> None:
        super().__init__()
        self.identity = nn.Embedding(num_stocks, identity_dim) if identity_dim > 0 else None
        self.mlp = nn.Sequential(
            nn.Linear(num_inputs + max(identity_dim, 0), hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, proj_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, N, F_in)`` -> ``(B, N, proj_dim)``, L2-normalised."""
        B, N, _ = x.shape
        if self.identity is not None:
            ident = self.identity.weight[:N].expand(B, N, -1)  # (B, N, identity_dim)
            x = torch.cat([x, ident], dim=-1)
        return F.normalize(self.mlp(x), dim=-1)  # (B, N, proj_dim)


def info_nce_loss(
    z: torch.Tensor, positives: torch.Tensor, valid: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Multi-positive InfoNCE (SupCon) over the stocks of each date.

    Args:
        z: ``(B, N, P)`` unit vectors.
        positives: ``bool (B, N, N)``, ``[b, i, j]`` = j is a positive for anchor i.
        valid: ``bool (B, N)`` stocks present at the date (negatives = valid non-positives).
    For anchor i: ``-mean_{j in pos(i)} log softmax_j(z_i . z_j / tau)`` over valid ``j != i``.
    """
    B, N, _ = z.shape
    eye = torch.eye(N, dtype=torch.bool, device=z.device)
    keys = valid[:, None, :] & ~eye  # (B, N, N)
    logits = (z @ z.transpose(1, 2)) / temperature  # (B, N, N)
    logits = logits.masked_fill(~keys, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, N, N)
    pos = positives & keys & valid[:, :, None]  # (B, N, N)
    n_pos = pos.sum(-1)  # (B, N)
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(-1) / n_pos.clamp(min=1)
    has = n_pos > 0
    if not has.any():
        return z.sum() * 0.0
    return per_anchor[has].mean()


def trailing_returns_from_labels(labels: np.ndarray, label_delay: int = 0) -> np.ndarray:
    """Daily returns *realised* by each date, ``[T, N]``, from 1-day forward-return labels.

    ``label_1[s] = close[s+d+1]/close[s+d] - 1`` is realised at ``s + d + 1``, so the return
    known at t is ``label_1[t - 1 - d]`` (NaN for the first ``1 + d`` dates).
    """
    one_day = labels[..., 0] if labels.ndim == 3 else labels
    out = np.full(one_day.shape, np.nan, dtype=np.float32)
    shift = 1 + label_delay
    out[shift:] = one_day[:-shift]
    return out


def correlation_positives(
    returns: np.ndarray, dates_index: np.ndarray, window: int, top_k: int
) -> np.ndarray:
    """``bool [T', N, N]``: for each date t, each stock's ``top_k`` most correlated stocks
    over the trailing returns ``returns[t - window + 1 .. t]`` (past only).

    Pairs with fewer than ``window // 2`` common observations are never positives.
    """
    T, N = returns.shape
    idx = np.asarray(dates_index)
    offs = np.arange(-window + 1, 1)
    rows = idx[:, None] + offs[None, :]  # (T', W)
    win = np.where(rows[..., None] >= 0, returns[np.clip(rows, 0, T - 1)], np.nan)  # (T', W, N)
    ok = np.isfinite(win)
    x = np.where(ok, win, 0.0)
    cnt = ok.sum(1).astype(np.float64)  # (T', N)
    mean = x.sum(1) / np.maximum(cnt, 1)
    xc = np.where(ok, x - mean[:, None, :], 0.0)  # (T', W, N)
    cov = np.einsum("twi,twj->tij", xc, xc)  # (T', N, N)
    var = np.einsum("twi,twi->ti", xc, xc)  # (T', N)
    pair_n = np.einsum("twi,twj->tij", ok.astype(np.float64), ok.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.sqrt(var[:, :, None] * var[:, None, :])
    corr = np.where((pair_n >= window // 2) & np.isfinite(corr), corr, -np.inf)
    corr[:, np.arange(N), np.arange(N)] = -np.inf  # never your own positive
    k = min(top_k, N - 1)
    top = np.argsort(-corr, axis=-1)[..., :k]  # (T', N, k)
    pos = np.zeros((len(idx), N, N), dtype=bool)
    np.put_along_axis(pos, top, True, axis=-1)
    return pos & np.isfinite(corr)


# ----------------------------------------------------------------------------- Stage1 score
class ScoreExtractor(RelationshipExtractor):
    """Stage1's own forecast of each stock as a relationship column (stacking).

    Stage1 reads every stock at once, so its forecast already sums up what the other stocks
    say about this one; giving it to Stage3 lets the temporal model weigh it against the
    stock's own history. In the out-of-fold store every training date's score comes from a
    fold model that never saw that date's label, which is what makes stacking honest.

    Args:
        horizons: how many of Stage1's horizons to keep (columns ``stage1_score_h1..``).
    """

    def __init__(self, horizons: int = 1) -> None:
        if horizons < 1:
            raise ValueError(f"horizons must be >= 1, got {horizons}")
        self.horizons = horizons

    def extract(self, model, features, dates_index=None):
        """``[T', N, horizons]``: Stage1's forecast (its first ``horizons`` outputs)."""
        idx = check_dates_index(features, dates_index)
        pred = np.asarray(stage1_outputs(model, features, idx, outputs=("pred",))["pred"])
        keep = min(self.horizons, pred.shape[-1])
        score = pred[..., :keep].astype(np.float64)
        # z-scored across each date's stocks: the IC loss leaves each model's scale free, and
        # fold models of the out-of-fold store must speak in one unit
        valid = features.mask[idx][..., None]  # (T', N, 1)
        count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
        mean = np.where(valid, score, 0.0).sum(axis=1, keepdims=True) / count
        dev = np.where(valid, score - mean, 0.0)
        std = np.sqrt((dev**2).sum(axis=1, keepdims=True) / count)
        names = [f"stage1_score_h{h + 1}" for h in range(keep)]
        return masked_features(features, idx, names, dev / np.maximum(std, 1e-12))


# ----------------------------------------------------------------------------- combos
class CombinedExtractor(RelationshipExtractor):
    """Several extractors side by side (e.g. V1+V2 for large universes)."""

    def __init__(self, extractors: Sequence[RelationshipExtractor]) -> None:
        if not extractors:
            raise ValueError("CombinedExtractor needs at least one extractor")
        self.extractors = list(extractors)

    def fit(self, model, features, labels, split, **kwargs):
        for e in self.extractors:
            e.fit(model, features, labels, split, **kwargs)
        return self

    def fitted_state(self) -> dict[str, np.ndarray]:
        """Each part's arrays under ``<its position>/``."""
        return {
            f"{i}/{k}": v
            for i, e in enumerate(self.extractors)
            for k, v in e.fitted_state().items()
        }

    def load_fitted_state(self, state: dict[str, np.ndarray]) -> CombinedExtractor:
        for i, e in enumerate(self.extractors):
            prefix = f"{i}/"
            e.load_fitted_state(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
        unknown = [k for k in state if int(k.split("/", 1)[0]) >= len(self.extractors)]
        if unknown:
            raise ValueError(f"the saved state has parts this extractor lacks: {unknown}")
        return self

    def extract(self, model, features, dates_index=None):
        # the extractors that read the peers along the attention share one Stage1 pass
        peers = [e for e in self.extractors if hasattr(e, "extract_group")]
        shared = {}
        if len(peers) > 1:
            got = peers[0].extract_group(peers, model, features, dates_index)
            shared = {id(e): rel for e, rel in zip(peers, got, strict=True)}
        return RelationshipFeatures.concat(
            [shared.get(id(e)) or e.extract(model, features, dates_index) for e in self.extractors]
        )
