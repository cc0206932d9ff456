"""Multi-horizon quantile outputs shared by every Stage3 model: head, loss, point forecast."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["QuantileHead", "median_index", "pinball_loss", "point_forecast"]


def median_index(quantiles: Sequence[float] | None) -> int:
    """Index of the quantile nearest 0.5 (0 in point mode)."""
    if quantiles is None:
        return 0
    return min(range(len(quantiles)), key=lambda i: abs(quantiles[i] - 0.5))


class QuantileHead(nn.Module):
    """Linear head ``[..., in_dim] -> [..., H, Q]`` with quantiles ordered by construction.

    The median quantile is predicted directly; the others are the median plus (above) or
    minus (below) cumulative softplus offsets, so ``pred[..., q]`` strictly increases in q
    for every input. With ``quantiles=None`` it is a plain linear point forecast, Q = 1.
    """

    def __init__(self, in_dim: int, horizons: int, quantiles: Sequence[float] | None):
        super().__init__()
        self.horizons = horizons
        self.quantiles = None if quantiles is None else tuple(quantiles)
        self.num_quantiles = 1 if quantiles is None else len(quantiles)
        self.mid = median_index(self.quantiles)
        self.proj = nn.Linear(in_dim, horizons * self.num_quantiles)
        if self.num_quantiles > 1:
            self.init_interval(1.0)

    @torch.no_grad()
    def init_interval(self, scale: float) -> None:
        """Start the quantiles at those of a normal with std ``scale`` around the median.

        Stage3 trains on cross-sectionally z-scored labels by default (``scale=1``: the
        10-90% band starts at +-1.28); for raw returns pass their std. Too narrow a start
        leaves the bands undercovering for many epochs, because the pinball loss widens
        them only slowly.
        """
        if self.num_quantiles == 1:
            return
        from statistics import NormalDist

        z = [NormalDist().inv_cdf(q) for q in self.quantiles]
        m = self.mid
        bias = self.proj.bias.view(self.horizons, self.num_quantiles)
        for k in range(self.num_quantiles):
            if k == m:
                continue
            gap = abs(z[k] - z[k - 1 if k > m else k + 1]) * scale  # to the neighbour inwards
            bias[:, k] = float(np.log(np.expm1(max(gap, 1e-6))))  # softplus^-1(gap)

    def forward(self, h: Tensor) -> Tensor:
        raw = self.proj(h).unflatten(-1, (self.horizons, self.num_quantiles))  # (..., H, Q)
        if self.num_quantiles == 1:
            return raw
        m = self.mid
        center = raw[..., m : m + 1]  # (..., H, 1)
        up = center + torch.cumsum(F.softplus(raw[..., m + 1 :]), dim=-1)
        # below the median: accumulate outward from the median, then restore ascending order
        down = center - torch.cumsum(F.softplus(raw[..., :m].flip(-1)), dim=-1).flip(-1)
        return torch.cat([down, center, up], dim=-1)  # (..., H, Q)


def pinball_loss(
    pred: Tensor,
    y: Tensor,
    quantiles: Sequence[float] | None,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean pinball (quantile) loss over valid (sample, horizon, quantile) entries.

    Args:
        pred: ``[..., H, Q]`` forecasts.
        y: ``[..., H]`` targets; NaN entries are ignored.
        quantiles: the Q quantile levels; None = point mode, where the loss is the mean
            squared error of ``pred[..., 0]``.
        mask: optional bool, ``[...]`` (per sample) or ``[..., H]``; False entries are ignored.

    Returns:
        A scalar; 0 when no entry is valid (so an empty batch does not produce NaN).
    """
    valid = torch.isfinite(y)
    if mask is not None:
        mask = mask.bool()
        valid = valid & (mask.unsqueeze(-1) if mask.dim() == y.dim() - 1 else mask)
    y = torch.where(valid, y, torch.zeros_like(y))
    if quantiles is None:
        per_entry = (pred[..., 0] - y).square()  # (..., H)
    else:
        q = torch.as_tensor(quantiles, dtype=pred.dtype, device=pred.device)
        err = y.unsqueeze(-1) - pred  # (..., H, Q)
        per_entry = torch.maximum(q * err, (q - 1.0) * err).mean(-1)  # (..., H)
    weight = valid.to(per_entry.dtype)
    return (per_entry * weight).sum() / weight.sum().clamp_min(1.0)


def point_forecast(pred: Tensor, quantiles: Sequence[float] | None) -> Tensor:
    """``[..., H, Q] -> [..., H]``: the median quantile, or the only forecast in point mode."""
    return pred[..., median_index(quantiles)]
