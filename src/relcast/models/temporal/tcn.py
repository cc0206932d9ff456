"""TCN Stage3 forecaster: dilated causal convolutions (Bai, Kolter & Koltun, 2018).

    x [B, L, F] -> 1x1 conv + stock / sector embeddings -> residual blocks -> QuantileHead

Block i holds two causal ``Conv1d`` with dilation ``2**i``, padded on the left only, so the
output at step l depends on steps ``<= l``. The receptive field is

    1 + sum over convs of (kernel_size - 1) * dilation = 1 + 2 (k - 1) (2**levels - 1)

and must cover the lookback, otherwise the oldest steps of the window are never read: the
constructor checks it and says how to fix it. The head reads every step, giving
``pred_all [B, L, H, Q]``; ``pred = pred_all[:, -1]``. Fast at inference: no recurrence.
On a sequence batch (a chunk) every step reads the last ``receptive_field`` steps; when the
receptive field equals the lookback, a scored step's output equals the windowed output
exactly (``tests/test_sequence.py``); with a larger one it also reads up to
``receptive_field - lookback`` older steps that a window would zero-pad.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from relcast.models.temporal.losses import QuantileHead
from relcast.models.temporal.registry import TemporalConfig, origin_output, register_model

CONVS_PER_BLOCK = 2


def receptive_field(kernel_size: int, num_levels: int) -> int:
    """Steps one output of a TCN with dilations ``1, 2, ..., 2**(num_levels-1)`` can see."""
    return 1 + CONVS_PER_BLOCK * (kernel_size - 1) * (2**num_levels - 1)


def levels_needed(kernel_size: int, lookback: int) -> int:
    """Fewest levels whose receptive field covers ``lookback`` steps."""
    levels = 1
    while receptive_field(kernel_size, levels) < lookback:
        levels += 1
    return levels


@dataclass
class TCNConfig(TemporalConfig):
    """Hyperparameters of the TCN (common fields in ``TemporalConfig``; channels = hidden_size)."""

    kernel_size: int = 3
    """Width of every causal convolution (>= 2)."""
    num_levels: int | None = None
    """Residual blocks, block i dilated by 2**i; None = the fewest that cover ``lookback``."""
    weight_norm: bool = False
    """Weight-normalise the convolutions, as in the original TCN."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel_size < 2:
            raise ValueError(f"kernel_size must be >= 2, got {self.kernel_size}")
        if self.num_levels is None:
            self.num_levels = levels_needed(self.kernel_size, self.lookback)
        rf = receptive_field(self.kernel_size, self.num_levels)
        if rf < self.lookback:
            dilations = ", ".join(str(2**i) for i in range(self.num_levels))
            span = CONVS_PER_BLOCK * (2**self.num_levels - 1)
            kernel = 1 + math.ceil((self.lookback - 1) / span)
            raise ValueError(
                f"TCN receptive field {rf} < lookback {self.lookback} (kernel_size="
                f"{self.kernel_size}, num_levels={self.num_levels}, dilations {dilations}): "
                f"use num_levels >= {levels_needed(self.kernel_size, self.lookback)} "
                f"or kernel_size >= {kernel}, or leave num_levels unset to size it automatically"
            )

    @property
    def receptive_field(self) -> int:
        """Steps the last output can see (>= lookback by construction)."""
        return receptive_field(self.kernel_size, self.num_levels)


class CausalConv1d(nn.Module):
    """``Conv1d`` padded on the left only: output step l reads input steps ``<= l``."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, use_weight_norm: bool):
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.conv = weight_norm(conv) if use_weight_norm else conv

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (self.left_pad, 0)))  # (B, C, L)


class TemporalBlock(nn.Module):
    """Two dilated causal convolutions with ReLU and dropout, plus a residual connection."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float, wn: bool):
        super().__init__()
        self.conv1 = CausalConv1d(channels, kernel_size, dilation, wn)
        self.conv2 = CausalConv1d(channels, kernel_size, dilation, wn)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.drop(F.relu(self.conv1(x)))  # (B, C, L)
        h = self.drop(F.relu(self.conv2(h)))
        return F.relu(x + h)


@register_model("tcn")
class TCNForecaster(nn.Module):
    """Temporal convolutional network forecaster (``create_model("tcn", ...)``)."""

    Config = TCNConfig

    def __init__(self, config: TCNConfig):
        super().__init__()
        self.config = config
        c = config.hidden_size
        self.input_proj = nn.Linear(config.num_features, c)
        self.stock_emb = nn.Embedding(config.num_stocks, c)
        self.sector_emb = nn.Embedding(config.num_sectors, c)
        nn.init.normal_(self.stock_emb.weight, std=0.02)
        nn.init.normal_(self.sector_emb.weight, std=0.02)
        self.blocks = nn.Sequential(
            *[
                TemporalBlock(c, config.kernel_size, 2**i, config.dropout, config.weight_norm)
                for i in range(config.num_levels)
            ]
        )
        self.head = QuantileHead(c, config.horizons, config.quantiles)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = batch["x"]  # (B, L, F)
        static = self.stock_emb(batch["stock_id"]) + self.sector_emb(batch["sector_id"])  # (B, C)
        h = self.input_proj(x) + static[:, None, :]  # (B, L, C)
        h = self.blocks(h.transpose(1, 2)).transpose(1, 2)  # (B, L, C), causal
        pred_all = self.head(h)  # (B, L, H, Q)
        return {"pred": origin_output(batch, pred_all), "pred_all": pred_all}
