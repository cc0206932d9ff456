"""V3 relationship features: an encoder trained with a contrastive loss, and its training loop.

:class:`ContrastiveExtractor` is the V3 estimator (``fit`` / ``extract`` like every
relationship extractor): positives are same-sector stocks and/or the most correlated stocks
over returns realised by each date, negatives the rest. Its parts without a loop (the
encoder, the InfoNCE loss, the positive pairs) are in :mod:`relcast.models.extractors`;
what trains them, :func:`train_contrastive_encoder`, is here on the training floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from relcast.features.featureset import FeatureSet
from relcast.models.extractors import (
    ContrastiveEncoder,
    RelationshipExtractor,
    check_dates_index,
    correlation_positives,
    info_nce_loss,
    masked_features,
    stage1_outputs,
    trailing_returns_from_labels,
)
from relcast.progress import PassProgress


@dataclass(frozen=True)
class ContrastiveSettings:
    """V3's settings (the config's ``relationships.v3`` section, plus the seed).

    Attributes:
        proj_dim: size of the learned unit projection ``ctr_*``.
        hidden_size: width of the encoder's hidden layer.
        inputs: ``"features"`` (the stock's own features at t, ``feature_groups``) or
            ``"embeddings"`` (Stage1's embeddings at t).
        feature_groups: feature groups read when ``inputs`` is ``"features"``.
        positives: ``"sector"``, ``"corr"`` (the ``top_k`` most correlated stocks over the
            trailing ``corr_window`` realised returns) or ``"both"``.
        corr_window, top_k: see ``positives``.
        temperature: InfoNCE temperature.
        identity_dim: size of a learned stock-identity embedding concatenated to the input
            (as Stage1 does; 0 disables).
        steps, batch_dates, lr: training steps, dates per step, learning rate.
        seed: seed of the initial weights and of the batches of dates.
    """

    proj_dim: int = 16
    hidden_size: int = 64
    inputs: str = "features"
    feature_groups: tuple[str, ...] = ("own",)
    positives: str = "both"
    corr_window: int = 60
    top_k: int = 3
    temperature: float = 0.1
    identity_dim: int = 8
    steps: int = 300
    batch_dates: int = 32
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.inputs not in ("features", "embeddings"):
            raise ValueError(f"inputs must be 'features' or 'embeddings', got {self.inputs!r}")
        if self.positives not in ("sector", "corr", "both"):
            raise ValueError(
                f"positives must be 'sector', 'corr' or 'both', got {self.positives!r}"
            )
        object.__setattr__(self, "feature_groups", tuple(self.feature_groups))


def train_contrastive_encoder(
    x: np.ndarray,
    positives: np.ndarray,
    valid: np.ndarray,
    settings: ContrastiveSettings,
) -> tuple[ContrastiveEncoder, list[float]]:
    """Fit a :class:`ContrastiveEncoder` with InfoNCE on random batches of dates.

    Args:
        x: ``float32 [T, N, F_in]`` inputs (zeros where masked).
        positives: ``bool [T, N, N]`` positive pairs of each date.
        valid: ``bool [T, N]`` stocks present at each date.
        settings: the encoder's sizes and training settings.
    Returns the encoder (in eval mode) and the loss of every step.
    """
    s = settings
    x_t = torch.from_numpy(np.asarray(x, dtype=np.float32))  # (T, N, F_in)
    pos = torch.from_numpy(np.asarray(positives, dtype=bool))  # (T, N, N)
    ok = torch.from_numpy(np.asarray(valid, dtype=bool))  # (T, N)
    T, N, F_in = x_t.shape
    gen = torch.Generator().manual_seed(s.seed)
    torch.manual_seed(s.seed)
    encoder = ContrastiveEncoder(F_in, N, s.hidden_size, s.proj_dim, s.identity_dim)
    opt = torch.optim.AdamW(encoder.parameters(), lr=s.lr, weight_decay=1e-4)
    history: list[float] = []
    encoder.train()
    progress = PassProgress("V3 contrastive training", s.steps, unit="steps")  # logs only
    for step in range(s.steps):
        b = torch.randint(0, T, (min(s.batch_dates, T),), generator=gen)
        z = encoder(x_t[b])  # (B, N, P)
        loss = info_nce_loss(z, pos[b], ok[b], s.temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
        progress.update(step + 1)
    progress.finish()
    encoder.eval()
    return encoder, history


class ContrastiveExtractor(RelationshipExtractor):
    """V3: a small encoder trained with InfoNCE so related stocks land close together.

    Positives for stock i at date t are its same-sector stocks (``positives="sector"``), its
    ``top_k`` most correlated stocks over the trailing ``corr_window`` returns realised by t
    (``"corr"``, past returns only), or the union (``"both"``); negatives are the other
    stocks present at t. Output: the unit projection ``ctr_<k>`` and the cosine similarity to
    every stock ``ctr_sim_<SYMBOL>`` (0 for stocks absent at that date).

    Args:
        settings: V3's settings (:class:`ContrastiveSettings`; its defaults if None).
        label_delay: label convention, to recover realised returns from 1-day labels.
        sector_ids: ``int [N]`` sector of every stock, for ``positives="sector"``/``"both"``
            (the Stage1 model's ``sector_ids`` otherwise, when it has more than one sector).
    """

    def __init__(
        self,
        settings: ContrastiveSettings | None = None,
        *,
        label_delay: int = 0,
        sector_ids: np.ndarray | None = None,
    ) -> None:
        self.settings = ContrastiveSettings() if settings is None else settings
        self.label_delay = label_delay
        self.sector_ids = sector_ids

    def _inputs(self, model, features: FeatureSet, idx: np.ndarray) -> np.ndarray:
        """``float32 [T', N, F_in]``, zeros where masked."""
        if self.settings.inputs == "embeddings":
            x = np.asarray(stage1_outputs(model, features, idx)["embeddings"])
        elif all(g in features.groups for g in self.settings.feature_groups):
            x = features.group(*self.settings.feature_groups)[idx]
        else:
            x = features.values[idx]
        return np.where(features.mask[idx][..., None], x, 0.0).astype(np.float32)

    def _sectors(self, model, N: int) -> np.ndarray | None:
        if self.sector_ids is not None:
            return np.asarray(self.sector_ids)
        if model is not None and hasattr(model, "sector_ids"):
            s = model.sector_ids.detach().cpu().numpy()
            return s if len(np.unique(s)) > 1 else None
        return None

    def positive_pairs(
        self,
        model,
        features: FeatureSet,
        labels: np.ndarray | None,
        dates_index: np.ndarray,
        returns: np.ndarray | None = None,
    ) -> np.ndarray:
        """``bool [T', N, N]``: ``[t, i, j]`` = stock j is a positive for anchor i at date t.

        Correlation positives read only the returns realised by each date: ``returns`` if
        given, else the 1-day ``labels`` shifted by ``1 + label_delay`` dates.
        """
        N = len(features.symbols)
        pos = np.zeros((len(dates_index), N, N), dtype=bool)
        sectors = self._sectors(model, N)
        if self.settings.positives in ("sector", "both"):
            if sectors is None:
                if self.settings.positives == "sector":
                    raise ValueError(
                        "positives='sector' needs sector_ids (or a model with sectors)"
                    )
            else:
                pos |= (sectors[:, None] == sectors[None, :])[None]
        if self.settings.positives in ("corr", "both"):
            realised = (
                returns
                if returns is not None
                else trailing_returns_from_labels(np.asarray(labels), self.label_delay)
            )
            s = self.settings
            pos |= correlation_positives(realised, dates_index, s.corr_window, s.top_k)
        return pos

    def fit(
        self,
        model,
        features: FeatureSet,
        labels: np.ndarray,
        split: Any,
        *,
        returns: np.ndarray | None = None,
        **kwargs,
    ):
        """Train the encoder on the training span (``split.train``) with InfoNCE.

        Args:
            labels: ``[T, N, H]`` (or ``[T, N]``) forward returns; only used, shifted so that
                nothing after t is read, to get the returns realised by t for correlations.
            returns: optional ``[T, N]`` returns realised by each date, instead of ``labels``.
        """
        train = np.asarray(split.train)
        self.encoder_, self.loss_history_ = train_contrastive_encoder(
            self._inputs(model, features, train),
            self.positive_pairs(model, features, labels, train, returns),
            features.mask[train],
            self.settings,
        )
        return self

    def fitted_state(self) -> dict[str, np.ndarray]:
        """The trained encoder's weights (``encoder.<name>``)."""
        if not hasattr(self, "encoder_"):
            return {}
        return {
            f"encoder.{k}": v.detach().cpu().numpy() for k, v in self.encoder_.state_dict().items()
        }

    def load_fitted_state(self, state: dict[str, np.ndarray]) -> ContrastiveExtractor:
        """The encoder rebuilt from its weights (sizes read from their shapes)."""
        weights = {
            k.removeprefix("encoder."): torch.from_numpy(np.asarray(v)) for k, v in state.items()
        }
        first, last = weights["mlp.0.weight"], weights["mlp.4.weight"]  # (hidden, in), (P, hidden)
        identity = weights.get("identity.weight")
        identity_dim = 0 if identity is None else identity.shape[1]
        encoder = ContrastiveEncoder(
            num_inputs=first.shape[1] - identity_dim,
            num_stocks=0 if identity is None else identity.shape[0],
            hidden=first.shape[0],
            proj_dim=last.shape[0],
            identity_dim=identity_dim,
        )
        encoder.load_state_dict(weights)
        self.encoder_ = encoder.eval()
        return self

    def extract(self, model, features, dates_index=None):
        """``[T', N, proj_dim + N]``: projection and cosine similarity to every stock."""
        if not hasattr(self, "encoder_"):
            raise RuntimeError("ContrastiveExtractor is not fitted: call fit first")
        idx = check_dates_index(features, dates_index)
        x = torch.from_numpy(self._inputs(model, features, idx))
        with torch.no_grad():
            z = self.encoder_(x)  # (T', N, P)
            sims = z @ z.transpose(1, 2)  # (T', N, N) cosine
        valid = features.mask[idx]
        sims = sims.numpy() * valid[:, None, :]  # absent stocks: 0
        values = np.concatenate([z.numpy(), sims], axis=-1)
        names = [f"ctr_{k}" for k in range(self.settings.proj_dim)] + [
            f"ctr_sim_{s}" for s in features.symbols
        ]
        return masked_features(features, idx, names, values)
