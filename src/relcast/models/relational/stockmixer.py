"""StockMixer (Fan and Shen, AAAI 2024), from the paper: three MLP mixers, then a forecast.

1. Indicator mixing: an MLP across the F features of every step of every stock.
2. Time mixing, at several time scales: the window averaged over blocks of 1, 2, 4 steps,
   each scale mixed across its steps by a lower-triangular linear map (a step reads only
   steps before it), then all scales flattened to one ``hidden_size`` vector per stock.
3. Stock mixing through ``market_num`` hidden "market" nodes (stocks -> market -> stocks, a
   cost linear in N). The paper's map is a linear layer over the stock axis, tied to stock
   positions in a fixed universe; here a stock's share in each market node (a softmax over
   the date's unmasked stocks) and what it reads back (a softmax over the nodes) come from
   its own representation, so the mixing is equivariant to the stocks' order and a masked
   stock is in no node.
The forecast reads the stock's own representation and what it read from the market.
Loss (training side): squared / pinball error plus ``rank_weight`` (the paper's alpha = 0.1)
times a pairwise hinge on wrongly ordered pairs of the same date.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from relcast.models.relational.common import RelationalConfig, masked_softmax
from relcast.models.temporal.losses import QuantileHead
from relcast.models.temporal.registry import register_model


@dataclass
class StockMixerConfig(RelationalConfig):
    """StockMixer's hyperparameters beyond the common ones."""

    market_num: int = 20
    """Hidden market nodes of the stock mixing (the paper's 20)."""
    scales: tuple[int, ...] = (1, 2, 4)
    """Time scales of the time mixing: steps averaged per block."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.scales = tuple(int(s) for s in self.scales)
        if self.market_num < 1 or not self.scales or min(self.scales) < 1:
            raise ValueError("market_num and every scale must be >= 1")
        if max(self.scales) > self.lookback:
            raise ValueError(f"scales {self.scales} exceed the lookback {self.lookback}")


class MixerBlock(nn.Module):
    """Residual MLP over the last axis: ``x + MLP(LayerNorm(x))``."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, width), nn.Hardswish(), nn.Dropout(dropout), nn.Linear(width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class CausalTimeMix(nn.Module):
    """Residual mixing across the steps of ``[B, S, F]`` with a lower-triangular weight."""

    def __init__(self, steps: int, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.weight = nn.Parameter(torch.eye(steps) + 0.01 * torch.randn(steps, steps))
        self.register_buffer("lower", torch.tril(torch.ones(steps, steps, dtype=torch.bool)))
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.where(self.lower, self.weight, 0.0)  # (S, S): step s reads steps <= s
        return x + self.act(torch.einsum("st,btf->bsf", w, self.norm(x)))


@register_model("stockmixer")
class StockMixer(nn.Module):
    """StockMixer: indicator, time and stock mixing (see the module docstring)."""

    Config = StockMixerConfig
    cross_section = True

    def __init__(self, config: StockMixerConfig) -> None:
        super().__init__()
        self.config = c = config
        F, d = c.num_features, c.hidden_size
        self.indicator_mix = MixerBlock(F, c.dropout)
        self.steps = [c.lookback // s for s in c.scales]
        self.time_mix = nn.ModuleList([CausalTimeMix(S, F) for S in self.steps])
        self.to_hidden = nn.Sequential(nn.Linear(sum(self.steps) * F, d), nn.Hardswish())
        self.assign = nn.Linear(d, c.market_num)  # a stock's share in each market node
        self.read = nn.Linear(d, c.market_num)  # how much it reads from each node
        self.market_mix = nn.Sequential(nn.Linear(d, d), nn.Hardswish())
        self.dropout = nn.Dropout(c.dropout)
        self.head = QuantileHead(2 * d, c.horizons, c.quantiles)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, L, F] -> [B, hidden_size]``: indicator and time mixing of each stock."""
        x = self.indicator_mix(x)  # (B, L, F)
        B, L, F = x.shape
        parts = []
        for scale, steps, mix in zip(self.config.scales, self.steps, self.time_mix, strict=True):
            recent = x[:, L - scale * steps :]  # the last scale * steps steps
            pooled = recent.reshape(B, steps, scale, F).mean(dim=2)  # (B, S, F)
            parts.append(mix(pooled).reshape(B, steps * F))
        return self.to_hidden(torch.cat(parts, dim=1))  # (B, d)

    def mix_stocks(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``h [D, N, d]`` -> what each stock reads from the date's market nodes ``[D, N, d]``."""
        h = torch.where(mask[..., None], h, 0.0)
        share = masked_softmax(self.assign(h), mask[..., None], dim=1)  # (D, N, M) over stocks
        market = self.market_mix(torch.einsum("dnm,dne->dme", share, h))  # (D, M, d)
        read = torch.softmax(self.read(h), dim=-1)  # (D, N, M) over nodes
        return torch.einsum("dnm,dme->dne", read, market)  # (D, N, d)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, mask = batch["x"], batch["mask"].bool()
        D, N, L, F = x.shape
        x = torch.where(mask[..., None, None], x, 0.0)
        h = self.encode(x.reshape(D * N, L, F)).reshape(D, N, -1)  # (D, N, d)
        mixed = self.mix_stocks(h, mask)  # (D, N, d)
        pred = self.head(self.dropout(torch.cat([h, mixed], dim=-1)))  # (D, N, H, Q)
        return {"pred": pred}
