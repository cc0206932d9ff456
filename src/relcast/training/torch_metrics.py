"""Torch versions of the daily signal metrics, for losses and validation inside training.

:func:`ic_torch` (differentiable) and :func:`rank_ic_torch` follow the conventions of
:mod:`relcast.metrics` (valid cells, NaN where undefined, average ranks for ties) on
``[B, N]`` batches of dates; ``tests/test_metrics.py`` checks them against the numpy ones.
"""

from __future__ import annotations

import torch

__all__ = ["ic_torch", "rank_ic_torch", "torch_average_ranks"]


def _torch_valid(
    pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    if pred.shape != label.shape or pred.dim() != 2:
        raise ValueError(
            f"expected pred and label of the same shape [B, N], got {tuple(pred.shape)} "
            f"and {tuple(label.shape)}"
        )
    valid = torch.isfinite(pred) & torch.isfinite(label)
    if mask is not None:
        valid = valid & mask.to(torch.bool)
    return valid


def _torch_masked_pearson(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    w = valid.to(x.dtype)
    n = w.sum(dim=1)  # (B,)
    x = torch.where(valid, x, zero)
    y = torch.where(valid, y, zero)
    safe_n = n.clamp_min(1.0).unsqueeze(1)
    xc = (x - x.sum(dim=1, keepdim=True) / safe_n) * w  # (B, N)
    yc = (y - y.sum(dim=1, keepdim=True) / safe_n) * w
    sxy = (xc * yc).sum(dim=1)
    sxx = (xc * xc).sum(dim=1)
    syy = (yc * yc).sum(dim=1)
    # relative tolerance: a constant row leaves rounding noise of order eps * |mean|
    degenerate = (
        (n < 2)
        | (sxx <= 1e-12 * (x * x).sum(dim=1) + 1e-30)
        | (syy <= 1e-12 * (y * y).sum(dim=1) + 1e-30)
    )
    # clamp before sqrt so that degenerate rows never send NaN/inf gradients to valid ones
    r = sxy / torch.sqrt((sxx * syy).clamp_min(1e-30))
    return torch.where(degenerate, torch.full_like(r, float("nan")), r)


def ic_torch(
    pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Differentiable Pearson IC per row: ``[B, N] -> [B]``, NaN where fewer than 2 valid.

    Use ``-ic_torch(...).nanmean()`` as a correlation loss; invalid cells get no gradient.
    """
    valid = _torch_valid(pred, label, mask)
    return _torch_masked_pearson(pred, label, valid)


def torch_average_ranks(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1-based average ranks of ``x [B, N]`` along each row among the ``valid`` cells (ties
    share their mean rank), as :func:`relcast.metrics.average_ranks` does in numpy."""
    x = torch.where(valid, x, torch.full_like(x, float("inf")))
    B, N = x.shape
    s, order = torch.sort(x, dim=1, stable=True)
    pos = torch.arange(N, device=x.device).expand(B, N)
    is_start = torch.ones_like(valid)
    is_start[:, 1:] = s[:, 1:] != s[:, :-1]
    is_end = torch.ones_like(valid)
    is_end[:, :-1] = is_start[:, 1:]
    start = torch.cummax(torch.where(is_start, pos, 0), dim=1).values
    end_rev = torch.where(is_end, pos, N).flip(1)
    end = torch.cummin(end_rev, dim=1).values.flip(1)
    avg = (start + end).to(x.dtype) / 2.0 + 1.0
    ranks = torch.empty_like(x).scatter_(1, order, avg)
    return ranks


def rank_ic_torch(
    pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Spearman Rank IC per row with average ranks for ties: ``[B, N] -> [B]`` (no gradient)."""
    with torch.no_grad():
        pred, label = pred.detach().double(), label.detach().double()
        valid = _torch_valid(pred, label, mask)
        rp = torch_average_ranks(pred, valid)
        rl = torch_average_ranks(label, valid)
        return _torch_masked_pearson(rp, rl, valid).to(torch.get_default_dtype())
