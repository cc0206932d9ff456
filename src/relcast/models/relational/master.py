"""MASTER, the market-guided stock transformer (Li et al., AAAI 2024), from the paper. It
reads the last ``steps`` dates of the window (the paper's 8; 0 = the whole lookback).

1. Market-guided gating: the market features ``m`` of the date (relcast's ``index`` group,
   columns ``idx_*``: the same for every stock) at the last step give
   ``alpha = F_s * softmax(W m / beta)`` over the F_s stock features, which rescales every
   step of every stock's stock features. Only ``m`` drives the gate.
2. A linear map of the gated stock features to ``hidden_size`` plus a sinusoidal positional
   encoding.
3. Intra-stock aggregation: self-attention over each stock's own steps.
4. Inter-stock aggregation: self-attention across the date's unmasked stocks at each step.
5. Temporal aggregation: attention pooling over the steps with the last step as the query.
6. The quantile head.
The market features only gate (as in the paper, they are not encoder inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from relcast.models.relational.common import RelationalConfig
from relcast.models.temporal.losses import QuantileHead
from relcast.models.temporal.registry import register_model


@dataclass
class MASTERConfig(RelationalConfig):
    """MASTER's hyperparameters beyond the common ones (``rank_weight`` 0: the paper's MSE)."""

    rank_weight: float = 0.0
    """Weight of the pairwise hinge; MASTER trains on the squared error alone."""
    intra_heads: int = 4
    """Heads of the attention over a stock's own steps (the paper's 4)."""
    inter_heads: int = 2
    """Heads of the attention across stocks (the paper's 2)."""
    beta: float = 5.0
    """Temperature of the gate's softmax."""
    market_prefixes: tuple[str, ...] = ("idx_",)
    """Feature-name prefixes of the market columns (the rest are stock features)."""
    steps: int = 8
    """Dates of the window MASTER reads, the last ones (the paper's T = 8); 0 = the whole
    lookback. The attention across stocks costs ``steps x N x N`` per date: at 1,026 stocks
    and a lookback of 60, about 5 CPU s and 3.7 GB per training date with 0 (one thread)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.market_prefixes = tuple(str(p) for p in self.market_prefixes)
        for heads in (self.intra_heads, self.inter_heads):
            if heads < 1 or self.hidden_size % heads:
                raise ValueError(f"hidden_size {self.hidden_size} must divide into {heads} heads")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0 (0: the whole lookback), got {self.steps}")

    def market_and_stock_columns(self) -> tuple[list[int], list[int]]:
        """Positions of the market columns and of the stock columns among the inputs."""
        market = market_columns(self.feature_names, self.market_prefixes)
        if not market or len(market) == self.num_features:
            raise ValueError(
                "MASTER needs market columns (names starting with "
                f"{list(self.market_prefixes)}, relcast's 'index' group) and stock columns "
                "among its inputs' feature_names; keep the index features on (the default)"
            )
        return market, [k for k in range(self.num_features) if k not in set(market)]


def market_columns(names: tuple[str, ...] | None, prefixes: tuple[str, ...]) -> list[int]:
    """Positions of the market columns among ``names``."""
    return [k for k, n in enumerate(names or ()) if n.startswith(prefixes)]


def positional_encoding(steps: int, width: int) -> torch.Tensor:
    """The sinusoidal encoding ``[steps, width]`` of the Transformer."""
    position = torch.arange(steps, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(1e4) / width))
    pe = torch.zeros(steps, width)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq[: width // 2])
    return pe


class AttentionBlock(nn.Module):
    """Pre-norm self-attention plus feed-forward, both residual, over ``[B, S, d]``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width)
        )

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm1(x)
        x = x + self.attn(q, q, q, key_padding_mask=padding, need_weights=False)[0]
        return x + self.ffn(self.norm2(x))


@register_model("master")
class MASTER(nn.Module):
    """MASTER (see the module docstring)."""

    Config = MASTERConfig
    cross_section = True

    def __init__(self, config: MASTERConfig) -> None:
        super().__init__()
        self.config = c = config
        market, stock = c.market_and_stock_columns()
        self.register_buffer("market_idx", torch.tensor(market, dtype=torch.long))
        self.register_buffer("stock_idx", torch.tensor(stock, dtype=torch.long))
        d = c.hidden_size
        self.gate = nn.Linear(len(market), len(stock))
        self.embed = nn.Linear(len(stock), d)
        self.register_buffer("position", positional_encoding(c.lookback, d), persistent=False)
        self.intra = AttentionBlock(d, c.intra_heads, c.dropout)
        self.inter = AttentionBlock(d, c.inter_heads, c.dropout)
        self.query = nn.Linear(d, d, bias=False)
        self.head = QuantileHead(d, c.horizons, c.quantiles)

    def market_gate(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``alpha [D, F_s]`` from the market columns at the last step (mean over the
        unmasked stocks: the same value for each of them)."""
        m = x[:, :, -1].index_select(-1, self.market_idx)  # (D, N, F_m)
        w = mask[..., None].to(m.dtype)
        m = (torch.where(mask[..., None], m, 0.0) * w).sum(1) / w.sum(1).clamp(min=1.0)
        F_s = len(self.stock_idx)
        return F_s * torch.softmax(self.gate(m) / self.config.beta, dim=-1)  # (D, F_s)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, mask = batch["x"], batch["mask"].bool()
        if self.config.steps:
            x = x[:, :, -self.config.steps :]  # the last steps of the window
        D, N, L, _ = x.shape
        x = torch.where(mask[..., None, None], x, 0.0)
        alpha = self.market_gate(x, mask)  # (D, F_s)
        s = x.index_select(-1, self.stock_idx) * alpha[:, None, None, :]  # (D, N, L, F_s)
        h = self.embed(s) + self.position[-L:]  # (D, N, L, d)
        h = self.intra(h.reshape(D * N, L, -1)).reshape(D, N, L, -1)  # over each stock's steps
        # across stocks at each step: a date with no unmasked stock attends to all (ignored)
        keys = mask & mask.any(dim=1, keepdim=True) | ~mask.any(dim=1, keepdim=True)
        padding = (~keys)[:, None, :].expand(D, L, N).reshape(D * L, N)
        h = h.transpose(1, 2).reshape(D * L, N, -1)  # (D * L, N, d)
        h = self.inter(h, padding).reshape(D, L, N, -1).transpose(1, 2)  # (D, N, L, d)
        q = self.query(h[:, :, -1])  # (D, N, d): the last step asks
        scores = torch.einsum("bnlk,bnk->bnl", h, q) / math.sqrt(h.shape[-1])  # (D, N, L)
        z = torch.einsum("bnl,bnlk->bnk", torch.softmax(scores, dim=-1), h)  # (D, N, d)
        return {"pred": self.head(z), "gate": alpha}
