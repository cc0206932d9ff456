"""Stage1: a Transformer over the cross-section of stocks at one date.

At each date the N stocks are a *set*: every stock is a token built from its features plus a
learned stock-identity embedding (and optionally a sector embedding), and stocks attend to
each other, so the attention weights are a learned stock-to-stock influence map. Stocks that
do not trade at a date are masked: they get exactly zero attention as keys and, as queries,
attend to nothing (all-zero attention row, zero outputs).

Outputs per date: embeddings ``[B, N, d_model]``, attention per layer ``[B, heads, N, N]``,
a learned relationship bottleneck ``[B, N, relationship_dim]`` that the prediction head reads
(so it is always trained, never a random projection), a market vector (masked mean of the
relationship vectors) and the baseline return prediction ``[B, N, horizons]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from relcast.progress import PassProgress

if TYPE_CHECKING:
    from relcast.features.featureset import FeatureSet


@dataclass
class Stage1Config:
    """Hyperparameters of :class:`CrossSectionalTransformer` (input sizes come from the data)."""

    num_features: int
    """F, features per stock and date."""
    num_stocks: int
    """N, size of the stock-identity embedding table."""
    num_sectors: int = 0
    """number of sector ids (0: no sector embedding and no sector task)."""
    horizons: int = 1
    """H, forward-return horizons predicted (1..H days)."""
    d_model: int = 64
    """width of the token embeddings."""
    num_heads: int = 4
    """attention heads per layer."""
    num_layers: int = 2
    """encoder layers."""
    dim_feedforward: int | None = None
    """hidden width of the MLP in each layer (None: 4 * d_model)."""
    dropout: float = 0.1
    """dropout on the residual branches and the input embedding."""
    attention_dropout: float = 0.0
    """dropout on the attention weights. 0 by default: with it, PyTorch's CPU
    ``scaled_dot_product_attention`` leaves its fused kernel for the math path, which builds
    the ``(B, heads, N, N)`` weights and a random mask of that size in every layer; at 1,026
    stocks (small preset, 32 dates per step, 2 cores) a training step was 8x slower
    (1.1 against 9.0 dates/s, ``benchmarks/stage1_scale.py``)."""
    relationship_dim: int = 16
    """width of the learned relationship bottleneck the prediction head reads."""
    use_sector_embedding: bool = True
    """add a learned sector embedding to each token (needs num_sectors > 0)."""
    multitask: bool = False
    """also train the correlation and sector-classification tasks."""
    corr_weight: float = 0.1
    """weight of the correlation loss (multitask)."""
    sector_weight: float = 0.1
    """weight of the sector cross-entropy (multitask)."""
    corr_window: int = 20
    """W, dates of future daily returns whose correlation the relationship vectors predict."""

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}"
            )
        if min(self.num_features, self.num_stocks, self.horizons) < 1:
            raise ValueError("num_features, num_stocks and horizons must be >= 1")
        if self.dim_feedforward is None:
            self.dim_feedforward = 4 * self.d_model

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        *,
        num_features: int,
        num_stocks: int,
        num_sectors: int = 0,
        horizons: int = 1,
    ) -> Stage1Config:
        """The config of a run: the hyperparameters from ``settings`` (the config's ``stage1``
        section, e.g. ``load_config("medium").stage1``; every field of this class it has) and
        the sizes from the data."""
        data = dict(
            num_features=num_features,
            num_stocks=num_stocks,
            num_sectors=num_sectors,
            horizons=horizons,
        )
        hyper = {
            f.name: getattr(settings, f.name)
            for f in fields(cls)
            if f.name not in data and hasattr(settings, f.name)
        }
        return cls(**hyper, **data)

    def to_dict(self) -> dict:
        """Plain dict (for checkpoints and YAML)."""
        return asdict(self)


ATTENTION_BATCH_BYTES = 256 * 2**20
"""Budget of :func:`predict_stage1` with ``need_weights`` for one batch's attention weights
(every layer and head, ``float32``): at 1,026 stocks one date of the large preset holds
134 MB of them, so 64 dates at once would need 8.6 GB."""

IDENTITY_INIT_STD = 1.0
"""Initial std of the stock-identity embedding (see :class:`CrossSectionalTransformer`)."""


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention over stocks with a validity mask, returning its weights."""

    def __init__(self, config: Stage1Config) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.attention_dropout
        self.attn_dropout = nn.Dropout(config.attention_dropout)

    def forward(
        self, x: torch.Tensor, key_valid: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x (B, N, d)``, ``key_valid (B, N)`` -> ``(B, N, d)`` and ``(B, heads, N, N)``."""
        B, N, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        heads = self.num_heads
        q, k, v = (t.view(B, N, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        # (B, heads, N, hd) each
        allowed = key_valid[:, None, None, :]  # (B, 1, 1, N)
        if not need_weights:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
            )
            return self.proj(y.transpose(1, 2).reshape(B, N, d)), None
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, heads, N, N)
        att = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        y = self.attn_dropout(att) @ v  # (B, heads, N, hd)
        return self.proj(y.transpose(1, 2).reshape(B, N, d)), att


class EncoderLayer(nn.Module):
    """Pre-LN Transformer layer: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, config: Stage1Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = MaskedSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, config.dim_feedforward),
            nn.GELU(),
            nn.Linear(config.dim_feedforward, config.d_model),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, key_valid: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        keep = valid[..., None].to(x.dtype)  # (B, N, 1): masked tokens stay exactly zero
        a, att = self.attn(self.ln_1(x), key_valid, need_weights)
        x = (x + self.dropout(a)) * keep
        x = (x + self.dropout(self.mlp(self.ln_2(x)))) * keep  # (B, N, d_model)
        return x, att


class CrossSectionalTransformer(nn.Module):
    """Stage1 model: stocks at one date attend to each other; see the module docstring.

    Args:
        config: the hyperparameters.
        sector_ids: optional ``int [num_stocks]`` sector id per stock identity (kept as a
            buffer, so it moves with the model and is saved in its state).
    """

    def __init__(self, config: Stage1Config, sector_ids: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.feature_embedding = nn.Linear(config.num_features, d)
        self.stock_embedding = nn.Embedding(config.num_stocks, d)
        self.use_sectors = config.use_sector_embedding and config.num_sectors > 0
        self.sector_embedding = nn.Embedding(config.num_sectors, d) if self.use_sectors else None
        if sector_ids is None:
            sector_ids = torch.zeros(config.num_stocks, dtype=torch.long)
        sector_ids = torch.as_tensor(sector_ids, dtype=torch.long)
        if sector_ids.shape != (config.num_stocks,):
            raise ValueError(f"sector_ids must have shape ({config.num_stocks},)")
        self.register_buffer("sector_ids", sector_ids)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(d)
        self.relationship = nn.Linear(d, config.relationship_dim)
        self.head = nn.Linear(config.relationship_dim, config.horizons)
        self.sector_head = (
            nn.Linear(config.relationship_dim, config.num_sectors)
            if config.multitask and config.num_sectors > 0
            else None
        )
        self.apply(self._init_weights)
        # The query/key/value projections keep PyTorch's default init (std ~ 1/sqrt(3 d), ~5x
        # the 0.02 above). Attention logits are bilinear in W_q and W_k: with both at 0.02 the
        # logits start ~0, the gradient of each factor is scaled by the other, and attention
        # stayed uniform for 10-20 epochs (a saddle) on the planted lead-lag of
        # synthetic_market, longer than early stopping waits: the IC loss then learned 2 of 3
        # seeds, with this init 3 of 3 (see tests/test_stage1.py).
        for layer in self.layers:
            layer.attn.qkv.reset_parameters()
        # Stock identities start at unit scale, not 0.02: who leads whom is a property of the
        # identities, and at 0.02 the date-to-date variation of the features drowned them in
        # the queries and keys. Measured on synthetic_market (30 stocks, 1,500 days, planted
        # lead-lag 0.35, horizon 1, 30 epochs): test rank IC 0.006 at 0.02 (the model fitted
        # noise: train rank IC 0.23) and 0.058 at 1.0 (oracle 0.15).
        nn.init.normal_(self.stock_embedding.weight, std=IDENTITY_INIT_STD)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        *,
        stock_ids: torch.Tensor | None = None,
        sector_ids: torch.Tensor | None = None,
        need_weights: bool = True,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Run the cross-section.

        Args:
            x: ``(B, N, F)`` features; values of masked stocks are ignored (may be NaN).
            mask: ``(B, N)`` bool, True where the stock is valid at that date.
            stock_ids: ``(N,)`` or ``(B, N)`` identity of each column (default ``arange(N)``).
            sector_ids: ``(N,)`` or ``(B, N)`` sector per column (default: the buffer
                looked up by ``stock_ids``).
            need_weights: return attention weights (explicit softmax); False uses the fused
                ``scaled_dot_product_attention`` and returns an empty ``attention`` list.

        Returns:
            dict with ``embeddings (B, N, d_model)``, ``attention`` (list of
            ``(B, heads, N, N)``, one per layer), ``relationship (B, N, relationship_dim)``,
            ``market (B, relationship_dim)``, ``pred (B, N, horizons)`` and, when multitask
            with sectors, ``sector_logits (B, N, num_sectors)``. Masked stocks' rows are zero.
        """
        B, N, _ = x.shape
        valid = mask.bool()  # (B, N)
        keep = valid[..., None].to(x.dtype)  # (B, N, 1)
        if stock_ids is None:
            stock_ids = torch.arange(N, device=x.device)
        # A date with no valid stock would make every softmax row -inf (NaN, and NaN
        # gradients for everyone); let its keys through, its outputs are zeroed anyway.
        key_valid = valid | ~valid.any(dim=1, keepdim=True)  # (B, N)

        h = self.feature_embedding(torch.where(valid[..., None], x, 0.0))  # (B, N, d_model)
        h = h + self.stock_embedding(stock_ids)
        if self.use_sectors:
            if sector_ids is None:
                sector_ids = self.sector_ids[stock_ids]  # sectors follow the identities
            h = h + self.sector_embedding(sector_ids)
        h = self.embedding_dropout(h) * keep

        attention = []
        for layer in self.layers:
            h, att = layer(h, valid, key_valid, need_weights)
            if att is not None:
                # Masked queries attend to nothing: their rows are zero, not uniform.
                attention.append(att * valid[:, None, :, None].to(att.dtype))  # (B, heads, N, N)

        embeddings = self.ln_f(h) * keep  # (B, N, d_model)
        relationship = self.relationship(embeddings) * keep  # (B, N, relationship_dim)
        count = keep.sum(dim=1).clamp(min=1.0)  # (B, 1)
        market = relationship.sum(dim=1) / count  # (B, relationship_dim)
        out = {
            "embeddings": embeddings,
            "attention": attention,
            "relationship": relationship,
            "market": market,
            "pred": self.head(relationship) * keep,  # (B, N, horizons)
        }
        if self.sector_head is not None:
            out["sector_logits"] = self.sector_head(relationship) * keep  # (B, N, num_sectors)
        return out


@torch.no_grad()
def predict_stage1(
    model: CrossSectionalTransformer,
    features: FeatureSet,
    dates_index: np.ndarray | None = None,
    batch_dates: int = 64,
    need_weights: bool = False,
    average_heads: bool = False,
    last_layer: bool = False,
    outputs: tuple[str, ...] | None = None,
) -> dict[str, np.ndarray]:
    """Run a trained Stage1 over dates and return numpy arrays stacked along dates.

    Returns a dict with ``dates_index [T']``, ``embeddings [T', N, d_model]``,
    ``relationship [T', N, r]``, ``market [T', r]``, ``pred [T', N, H]`` (zero where
    masked; in z-score units for the ``"mse"`` loss), ``mask [T', N]``, ``sector_logits``
    when the model has them, and with ``need_weights`` ``attention [T', layers, heads, N, N]``
    (``[T', layers, N, N]`` with ``average_heads``; ``last_layer`` keeps only the last
    layer, ``[T', 1, ...]``; memory grows as ``N**2``: with weights, batches hold at most
    ``ATTENTION_BATCH_BYTES`` of them). ``outputs`` keeps only those of the per-date outputs
    (e.g. ``("pred",)``: the embeddings of every date are ``T x N x d_model`` floats); None
    keeps all.
    """
    T = features.values.shape[0]
    index = np.arange(T) if dates_index is None else np.asarray(dates_index, dtype=np.int64)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    values = torch.from_numpy(np.asarray(features.values, dtype=np.float32))
    mask = torch.from_numpy(np.asarray(features.mask, dtype=bool))
    chunks: dict[str, list[np.ndarray]] = {}
    attention = None
    progress = PassProgress("Stage1 predict", len(index))  # a line now and then, in logs only
    if need_weights:
        cfg = model.config
        per_date = 4 * cfg.num_layers * cfg.num_heads * values.shape[1] ** 2
        batch_dates = max(1, min(batch_dates, ATTENTION_BATCH_BYTES // per_date))
    for start in range(0, len(index), batch_dates):  # batches of dates, not single dates
        idx = torch.from_numpy(index[start : start + batch_dates])
        out = model(values[idx].to(device), mask[idx].to(device), need_weights=need_weights)
        for key in ("embeddings", "relationship", "market", "pred", "sector_logits"):
            if key in out and (outputs is None or key in outputs):
                chunks.setdefault(key, []).append(out[key].float().cpu().numpy())
        if need_weights:
            layers = out["attention"]  # per layer (B, heads, N, N)
            if last_layer:
                layers = layers[-1:]
            if average_heads:
                layers = [a.mean(dim=1) for a in layers]  # (B, N, N) each, before stacking
            att = torch.stack(layers, dim=1).float().cpu().numpy()  # (B, layers, [heads,] N, N)
            if attention is None:  # filled in place: no list of batches + concatenated copy
                attention = np.empty((len(index), *att.shape[1:]), dtype=np.float32)
            attention[start : start + len(att)] = att
        progress.update(start + len(idx))
    progress.finish()
    model.train(was_training)
    result = {key: np.concatenate(parts) for key, parts in chunks.items()}
    if attention is not None:
        result["attention"] = attention
    result["dates_index"] = index
    result["mask"] = np.asarray(features.mask)[index]
    return result
