"""Stage1's losses: pure torch functions of ``pred, y [B, N, H]`` and a validity mask.

- ``"ic"`` (default): ``1 - mean`` daily Pearson IC (differentiable), over dates and horizons;
  ``pred`` has an arbitrary scale (Stage2 calibrates it to label units);
- ``"mse"``: squared error against labels z-scored across stocks at each date and horizon
  (so ``pred`` is in cross-sectional z-score units, not in returns);
- ``"listnet"``: cross-entropy between the softmax of ``pred`` over each date's stocks and the
  softmax of the normalised labels (:func:`listnet_loss`);
- ``"pairwise"``: RankNet's logistic loss over each date's stock pairs
  (:func:`pairwise_rank_loss`); ``"pairwise_hinge"``: RSR's (Feng et al. 2019) hinge on
  wrongly ordered pairs, 0 for a constant ``pred``, so give it ``rank_mse_weight > 0`` as
  RSR does. Every ranking loss adds ``rank_mse_weight`` times the MSE.

``label_norm`` picks the normalised labels that ``mse``, ``listnet`` and ``pairwise`` read:
``"cross_section"`` (z-score, clipped at 5) or ``"cs_rank"`` (qlib's CSRankNorm); the ``ic``
loss reads raw labels under ``"cross_section"`` (a Pearson IC ignores the z-score) and the
ranks under ``"cs_rank"``. Why IC is the default: see :mod:`relcast.training.stage1`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from relcast.features.labels import CS_RANK_SCALE
from relcast.training.torch_metrics import ic_torch, torch_average_ranks

LOSSES = ("mse", "ic", "listnet", "pairwise", "pairwise_hinge")
LABEL_NORMS = ("cross_section", "cs_rank")
# pairwise losses pair each stock with this many sampled partners per date (all if fewer)
PAIRS_PER_STOCK = 64
# z-scored labels are clipped: one bad print (split, data error) must not dominate a date.
LABEL_CLIP = 5.0


def cross_sectional_zscore(y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Z-score ``y (B, N, H)`` across stocks per date and horizon over ``valid``; 0 elsewhere."""
    w = valid.to(y.dtype)
    y = torch.where(valid, y, 0.0)
    n = w.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1, H)
    mean = y.sum(dim=1, keepdim=True) / n
    var = (((y - mean) * w) ** 2).sum(dim=1, keepdim=True) / n
    z = (y - mean) / torch.sqrt(var + 1e-12)
    return torch.where(valid, z.clamp(-LABEL_CLIP, LABEL_CLIP), 0.0)


def cross_sectional_rank_norm(y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """qlib's CSRankNorm of ``y (B, N, H)``: ``(rank_pct - 0.5) * 3.46`` over ``valid`` stocks
    per date and horizon (ties averaged); 0 elsewhere. The torch twin of
    :func:`relcast.features.labels.rank_normalize_labels_cross_section`."""
    B, N, H = y.shape
    rows = y.transpose(1, 2).reshape(B * H, N)  # (B * H, N)
    ok = valid.transpose(1, 2).reshape(B * H, N)
    ranks = torch_average_ranks(torch.where(ok, rows, 0.0), ok)  # invalid sort last
    count = ok.sum(dim=1, keepdim=True).clamp(min=1)
    z = (ranks / count - 0.5) * CS_RANK_SCALE
    z = torch.where(ok, z, 0.0).reshape(B, H, N).transpose(1, 2)
    return z.to(y.dtype)


def listnet_loss(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """ListNet (top-one) loss: cross-entropy between ``softmax(target / temperature)`` and
    ``softmax(pred)`` over the valid stocks of each date and horizon, averaged over the
    (date, horizon) rows with >= 2 valid stocks. ``pred, target, valid``: ``(B, N, H)``.

    Masked stocks get neither probability mass nor gradient; log-softmax keeps it stable.
    """
    low = torch.finfo(pred.dtype).min  # not -inf: an all-masked row stays finite
    logits = torch.where(valid, pred, low)
    goal = torch.where(valid, target / temperature, low)
    log_p = torch.log_softmax(logits, dim=1)  # over stocks
    q = torch.softmax(goal, dim=1)
    ce = -torch.where(valid, q * log_p, 0.0).sum(dim=1)  # (B, H)
    rows = valid.sum(dim=1) >= 2
    return ce[rows].mean() if rows.any() else pred.sum() * 0.0


def pairwise_rank_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    kind: str = "logistic",
    pairs_per_stock: int | None = None,
) -> torch.Tensor:
    """Pairwise ranking loss over the valid stock pairs of each date and horizon.

    ``"logistic"`` (RankNet): mean ``softplus(-(pred_i - pred_j))`` over pairs with
    ``target_i > target_j``. ``"hinge"`` (RSR): mean ``relu(-(pred_i - pred_j) *
    (target_i - target_j))`` over all ordered valid pairs (it is 0 for a constant ``pred``,
    so RSR adds it to an MSE). Each (date, horizon) row is averaged over its pairs, then rows
    with a pair are averaged. ``pred, target, valid``: ``(B, N, H)``; memory ``B*H*N^2``.

    ``pairs_per_stock=K < N`` pairs each stock with K partners drawn uniformly (torch's RNG)
    instead of all N: a sampled estimate of the same mean at memory ``B*H*N*K``.
    """
    if kind not in ("logistic", "hinge"):
        raise ValueError(f"kind must be 'logistic' or 'hinge', got {kind!r}")
    s = pred.transpose(1, 2)  # (B, H, N)
    y = torch.where(valid, target, 0.0).transpose(1, 2)
    ok = valid.transpose(1, 2)
    B, H, N = s.shape
    if pairs_per_stock is not None and pairs_per_stock < N:
        j = torch.randint(N, (B, H, N * pairs_per_stock), device=s.device)  # partners

        def partner(x: torch.Tensor) -> torch.Tensor:
            return torch.gather(x, 2, j).reshape(B, H, N, pairs_per_stock)  # (B, H, N, K)

        ds = s[..., None] - partner(s)
        dy = y[..., None] - partner(y)
        itself = j.reshape(B, H, N, pairs_per_stock) == torch.arange(N, device=s.device)[:, None]
        pairs = ok[..., None] & partner(ok) & ~itself
    else:
        ds = s[..., :, None] - s[..., None, :]  # (B, H, N, N): pred_i - pred_j
        dy = y[..., :, None] - y[..., None, :]
        pairs = ok[..., :, None] & ok[..., None, :]
        pairs = pairs & ~torch.eye(N, dtype=torch.bool, device=s.device)
    if kind == "logistic":
        pairs = pairs & (dy > 0)
        per_pair = F.softplus(-ds)
    else:
        per_pair = torch.relu(-ds * dy)
    n = pairs.sum(dim=(-1, -2))  # (B, H)
    per_row = torch.where(pairs, per_pair, 0.0).sum(dim=(-1, -2)) / n.clamp(min=1)
    rows = n > 0
    return per_row[rows].mean() if rows.any() else pred.sum() * 0.0


def return_loss(
    pred: torch.Tensor,
    y: torch.Tensor,
    valid: torch.Tensor,
    loss: str = "ic",
    label_norm: str = "cross_section",
    rank_mse_weight: float = 0.0,
) -> torch.Tensor:
    """Stage1's return loss ``loss`` (see the module docstring) of ``pred`` against the raw
    labels ``y``, both ``(B, N, H)``, over the ``valid (B, N, H)`` cells."""
    zero = pred.sum() * 0.0  # keeps the graph when a term has nothing to score
    rank_norm = label_norm == "cs_rank"
    z = (cross_sectional_rank_norm if rank_norm else cross_sectional_zscore)(y, valid)
    if loss == "ic":
        B, N, H = pred.shape
        ic = ic_torch(
            pred.transpose(1, 2).reshape(B * H, N),
            (z if rank_norm else y).transpose(1, 2).reshape(B * H, N),
            valid.transpose(1, 2).reshape(B * H, N),
        )  # (B * H,)
        ok = torch.isfinite(ic)
        return 1.0 - ic[ok].mean() if ok.any() else zero
    n = valid.sum()
    mse = ((pred - z) ** 2 * valid).sum() / n if n > 0 else zero
    if loss == "mse":
        return mse
    if loss == "listnet":
        rank = listnet_loss(pred, z, valid)
    else:
        kind = "hinge" if loss == "pairwise_hinge" else "logistic"
        rank = pairwise_rank_loss(pred, z, valid, kind=kind, pairs_per_stock=PAIRS_PER_STOCK)
    return rank + rank_mse_weight * mse
