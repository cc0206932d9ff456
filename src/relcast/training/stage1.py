"""Training and inference for Stage1 (the cross-sectional Transformer).

One sample is one date: all N stocks' features ``x (N, F)``, their mask ``(N,)`` and their
forward-return labels ``y (N, H)``; a batch is a few dates. :class:`Stage1Module` holds the
losses and the optimiser, the Lightning ``Trainer`` from :func:`relcast.training.common.
make_trainer` owns the loop, devices (CPU/GPU/DDP), early stopping on the validation Rank IC,
the best checkpoint and the CSV log.

Losses:
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
ranks under ``"cs_rank"``.
Why IC by default: the MSE depends on the prediction's scale, which starts near 0 (the
0.02-std output layers), so it first has to grow the whole output path before the loss moves;
on the planted lead-lag of ``synthetic_market`` (20 stocks, 600 days, strength 0.8, 3 seeds,
patience 10) it sat on that plateau for 10-20 epochs and early stopping ended 2 of 3 runs
before it learned anything (test Rank IC ~0), while the scale-free IC loss learned 3 of 3
(test Rank IC 0.18-0.20). Given more epochs MSE gets there too (0.18 after 30 epochs).
Horizons: the pipeline trains Stage1 on the next-bar label only (``stage1.horizons=1``). With
5 horizons the IC loss averaged over labels that overlap from one date to the next (a 5-day
return shares 4 days with the next date's), and Stage1 memorised them: on synthetic_market
(30 stocks, 1,500 days, lead-lag 0.35) train rank IC 0.26, test -0.01, against 0.015-0.054
on the test span with horizon 1 only (2 seeds, 15 epochs).
Multi-task (``config.multitask``) adds
- a correlation loss: cosine similarity of two stocks' ``relationship`` vectors should match
  the realised correlation of their daily returns over the next ``corr_window`` dates (taken
  from the horizon-1 labels of dates inside the same span, so no label crosses the span);
- a sector cross-entropy from a head on the ``relationship`` vectors (with the sector
  embedding on, this mostly makes the bottleneck carry sector information).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from relcast.features.featureset import FeatureSet
from relcast.features.labels import CS_RANK_SCALE
from relcast.models.cross_sectional import (  # predict_stage1: re-exported, its old path
    CrossSectionalTransformer,
    Stage1Config,
    predict_stage1,  # noqa: F401
)
from relcast.training.loader import _distributed_rank, shard_batches
from relcast.training.metrics import _torch_average_ranks, ic_torch, rank_ic_torch

LOSSES = ("mse", "ic", "listnet", "pairwise", "pairwise_hinge")
LABEL_NORMS = ("cross_section", "cs_rank")
# pairwise losses pair each stock with this many sampled partners per date (all if fewer)
PAIRS_PER_STOCK = 64
# z-scored labels are clipped: one bad print (split, data error) must not dominate a date.
LABEL_CLIP = 5.0


class CrossSectionDataset(Dataset):
    """One item per date: ``x (N, F)`` (0 where masked), ``mask (N,)``, ``y (N, H)``.

    Dates without at least two valid, labelled target stocks are skipped. With
    ``corr_window > 0`` an item also has ``corr (N, N)``: the realised correlation of the
    stocks' horizon-1 returns over the next ``corr_window`` dates of the same span (NaN
    where a pair has too few common returns, on the diagonal and for masked stocks).

    Args:
        values: ``float [T, N, F]``.
        mask: ``bool [T, N]``.
        labels: ``float [T, N, H]``, NaN where undefined.
        index: the date indices of the span (e.g. ``split.train``).
        target: ``bool [N]``, symbols that count in losses and metrics (default all).
        corr_window: W for the correlation target (0: no target).
    """

    def __init__(
        self,
        values: np.ndarray,
        mask: np.ndarray,
        labels: np.ndarray,
        index: np.ndarray,
        *,
        target: np.ndarray | None = None,
        corr_window: int = 0,
    ) -> None:
        T, N, _ = values.shape
        target = np.ones(N, dtype=bool) if target is None else np.asarray(target, dtype=bool)
        index = np.unique(np.asarray(index, dtype=np.int64))  # sorted, no duplicates
        # The arrays are only referenced, never copied: an item reads its own date, so
        # ``values``/``labels`` may be memory-mapped (relcast.training.store) and larger than RAM.
        self.values, self.labels, self.target = values, labels, target
        self.mask = torch.from_numpy(np.asarray(mask, dtype=bool))  # (T, N)
        mask_np = self.mask.numpy()
        keep = np.zeros(len(index), dtype=bool)
        for start in range(0, len(index), 1024):  # chunks of dates bound the temporaries
            idx = index[start : start + 1024]
            labelled = self._labelled(mask_np[idx], np.asarray(labels[idx]))  # (t, N, H)
            keep[start : start + 1024] = (labelled.sum(axis=1) >= 2).any(axis=1)
        self.index = index[keep]
        self.corr_window = int(corr_window)
        if self.corr_window:
            # Returns of dates outside the span are hidden: the target never crosses a split.
            in_span = np.zeros(T, dtype=bool)
            in_span[index] = True
            h1 = np.asarray(labels[..., 0], dtype=np.float32)  # (T, N)
            y1 = np.where(self._labelled(mask_np, h1[..., None])[..., 0], h1, np.nan)
            self.returns = torch.from_numpy(np.where(in_span[:, None], y1, np.nan))

    def _labelled(self, mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``(..., N, H)`` True where a stock is valid, a target and has a finite label."""
        return mask[..., None] & self.target[:, None] & np.isfinite(labels)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        t = int(self.index[i])
        mask = self.mask[t]  # (N,)
        m = mask.numpy()
        x = np.where(m[:, None], self.values[t], 0.0).astype(np.float32)  # (N, F)
        label = np.asarray(self.labels[t], dtype=np.float32)  # (N, H)
        y = np.where(self._labelled(m, label), label, np.nan).astype(np.float32)
        item = {
            "x": torch.from_numpy(x),
            "mask": mask,
            "y": torch.from_numpy(y),
            "t": torch.tensor(t),
        }
        if self.corr_window:
            window = self.returns[t : t + self.corr_window]  # (W, N)
            corr = pairwise_correlation(window, min_count=max(5, self.corr_window // 2))
            both = self.mask[t][:, None] & self.mask[t][None, :]
            item["corr"] = torch.where(both, corr, torch.nan)
        return item


class DateBatches(IterableDataset):
    """Batches of dates of a :class:`CrossSectionDataset`, sharded across DDP ranks.

    Use with ``DataLoader(batch_size=None)``. Like the Stage3 ``WindowLoader``: every rank
    draws the same permutation of the dates, rank r takes every ``world_size``-th one, so each
    date is seen exactly once per epoch across ranks and ranks run the same number of steps
    (:func:`relcast.training.loader.shard_batches`). Lightning does not swap in its own
    ``DistributedSampler`` (which pads the last batch with repeated dates) for an iterable
    dataset.

    Args:
        dataset: the dates.
        batch_dates: dates per batch on each rank.
        shuffle: reshuffle every epoch (training).
        seed: the shuffle of epoch e is seeded by ``seed + e``.
        generator: if given, each epoch's shuffle seed is drawn from it instead, the way
            ``DataLoader(shuffle=True)`` draws from the global RNG. :func:`fit_stage1` passes a
            copy of the global RNG taken right after the model is built: one process sees
            the order a plain shuffled DataLoader would give, and DDP ranks (which Lightning
            re-seeds while it sets up the process group) see that same order too.
        rank, world_size: this process's shard; read from ``torch.distributed`` if None.
    """

    def __init__(
        self,
        dataset: CrossSectionDataset,
        batch_dates: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self.dataset, self.batch_dates = dataset, int(batch_dates)
        self.shuffle, self.seed, self.generator, self.epoch = shuffle, int(seed), generator, 0
        self.rank, self.world_size = rank, world_size

    def _shard(self) -> tuple[int, int]:
        return _distributed_rank() if self.rank is None else (self.rank, self.world_size or 1)

    def _permutation(self) -> torch.Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        if self.generator is not None:  # RandomSampler's recipe, on our own generator
            seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
        else:
            seed = self.seed + self.epoch
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        # counts do not depend on the order: no RNG draw here
        return len(shard_batches(torch.arange(len(self.dataset)), self.batch_dates, *self._shard()))

    def __iter__(self):
        batches = shard_batches(self._permutation(), self.batch_dates, *self._shard())
        self.epoch += 1
        for pos in batches:
            yield default_collate([self.dataset[int(i)] for i in pos])


def pairwise_correlation(r: torch.Tensor, min_count: int = 5) -> torch.Tensor:
    """Pearson correlation of columns of ``r (W, N)`` over their common finite rows.

    Returns ``(N, N)``, NaN on the diagonal and where a pair shares fewer than ``min_count``
    rows or one side is constant there.
    """
    m = torch.isfinite(r).to(torch.float64)  # (W, N)
    x = torch.nan_to_num(r.to(torch.float64)) * m
    n = m.T @ m  # (N, N) common rows
    sx = x.T @ m  # sum of x_i over rows where j is also present
    sxx = (x * x).T @ m
    sxy = x.T @ x
    safe_n = n.clamp(min=1.0)
    cov = sxy - sx * sx.T / safe_n
    var_i = sxx - sx * sx / safe_n
    var_j = var_i.T
    ok = (n >= min_count) & (var_i > 1e-20) & (var_j > 1e-20)
    ok &= ~torch.eye(r.shape[1], dtype=torch.bool)
    corr = cov / torch.sqrt((var_i * var_j).clamp(min=1e-30))
    return torch.where(ok, corr, torch.nan).to(torch.float32)


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
    ranks = _torch_average_ranks(torch.where(ok, rows, 0.0), ok)  # invalid sort last
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


def _define_stage1_module() -> type:
    # Lightning costs seconds to import, so the class is built on first use (see __getattr__
    # at the end of this file); its name and module are set so that pickling (ddp_spawn,
    # checkpoints) finds it as relcast.training.stage1.Stage1Module.
    import lightning

    class Stage1Module(lightning.LightningModule):
        """Loss, optimiser and logging around a :class:`CrossSectionalTransformer`.

        Logs ``train_loss``, ``val_loss``, ``val_ic`` and ``val_rank_ic`` (mean daily Rank IC of
        horizon 1 over the validation dates); multitask runs also log the component losses.

        Args:
            config: model config (or its dict, as stored in checkpoints).
            sector_ids: ``int [num_stocks]`` sector per stock, or None.
            loss: ``"ic"`` (default) or ``"mse"`` (see the module docstring).
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
        """

        def __init__(
            self,
            config: Stage1Config | dict,
            sector_ids: list[int] | np.ndarray | None = None,
            loss: str = "ic",
            lr: float = 1e-3,
            weight_decay: float = 1e-4,
            label_norm: str = "cross_section",
            rank_mse_weight: float = 0.0,
        ) -> None:
            super().__init__()
            if loss not in LOSSES:
                raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
            if label_norm not in LABEL_NORMS:
                raise ValueError(f"label_norm must be one of {LABEL_NORMS}, got {label_norm!r}")
            config = Stage1Config(**config) if isinstance(config, dict) else config
            sector_list = None if sector_ids is None else [int(s) for s in sector_ids]
            # Lightning compares the hparams with __init__'s locals: keep them plain values.
            sector_ids = sector_list
            self.save_hyperparameters(
                {
                    "config": config.to_dict(),
                    "sector_ids": sector_list,
                    "loss": loss,
                    "lr": lr,
                    "weight_decay": weight_decay,
                    "label_norm": label_norm,
                    "rank_mse_weight": rank_mse_weight,
                }
            )
            sectors = None if sector_list is None else torch.tensor(sector_list)
            self.model = CrossSectionalTransformer(config, sector_ids=sectors)
            self.config = config
            self.loss_name = loss
            self.label_norm = label_norm
            self.rank_mse_weight = rank_mse_weight
            self.has_sectors = sector_list is not None and config.num_sectors > 0

        def forward(self, batch: dict[str, torch.Tensor], need_weights: bool = False) -> dict:
            """Model outputs for a batch of dates."""
            return self.model(batch["x"], batch["mask"], need_weights=need_weights)

        def _losses(self, batch: dict[str, torch.Tensor], out: dict) -> dict[str, torch.Tensor]:
            pred, y = out["pred"], batch["y"]  # (B, N, H) each
            valid = torch.isfinite(y) & batch["mask"][..., None]  # (B, N, H)
            zero = pred.sum() * 0.0  # keeps the graph when a term has nothing to score
            rank_norm = self.label_norm == "cs_rank"
            z = (cross_sectional_rank_norm if rank_norm else cross_sectional_zscore)(y, valid)
            if self.loss_name != "ic":
                n = valid.sum()
                ret = ((pred - z) ** 2 * valid).sum() / n if n > 0 else zero
                if self.loss_name != "mse":
                    if self.loss_name == "listnet":
                        rank = listnet_loss(pred, z, valid)
                    else:
                        kind = "hinge" if self.loss_name == "pairwise_hinge" else "logistic"
                        rank = pairwise_rank_loss(
                            pred, z, valid, kind=kind, pairs_per_stock=PAIRS_PER_STOCK
                        )
                    ret = rank + self.rank_mse_weight * ret
            else:
                B, N, H = pred.shape
                ic = ic_torch(
                    pred.transpose(1, 2).reshape(B * H, N),
                    (z if rank_norm else y).transpose(1, 2).reshape(B * H, N),
                    valid.transpose(1, 2).reshape(B * H, N),
                )  # (B * H,)
                ok = torch.isfinite(ic)
                ret = 1.0 - ic[ok].mean() if ok.any() else zero
            losses = {"return": ret}
            total = ret
            if self.config.multitask:
                if "corr" in batch:
                    rel = F.normalize(out["relationship"], dim=-1)  # (B, N, r)
                    cos = rel @ rel.transpose(1, 2)  # (B, N, N)
                    ok = torch.isfinite(batch["corr"])
                    corr = ((cos - torch.nan_to_num(batch["corr"])) ** 2)[ok]
                    losses["corr"] = corr.mean() if corr.numel() else zero
                    total = total + self.config.corr_weight * losses["corr"]
                if "sector_logits" in out and self.has_sectors:
                    m = batch["mask"]  # (B, N)
                    sectors = self.model.sector_ids.expand_as(m)
                    losses["sector"] = F.cross_entropy(out["sector_logits"][m], sectors[m])
                    total = total + self.config.sector_weight * losses["sector"]
            losses["total"] = total
            return losses

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            losses = self._losses(batch, self(batch))
            B = batch["x"].shape[0]
            # sync_dist: epoch means over every rank's dates (a collective at epoch end only)
            self.log(
                "train_loss", losses["total"], on_step=False, on_epoch=True, batch_size=B,
                sync_dist=True,
            )  # fmt: skip
            for name in ("corr", "sector"):
                if name in losses:
                    self.log(
                        f"train_{name}_loss", losses[name], on_epoch=True, batch_size=B,
                        sync_dist=True,
                    )  # fmt: skip
            return losses["total"]

        def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
            out = self(batch)
            losses = self._losses(batch, out)
            B = batch["x"].shape[0]
            self.log("val_loss", losses["total"], on_epoch=True, batch_size=B, sync_dist=True)
            pred1, y1, m = out["pred"][..., 0], batch["y"][..., 0], batch["mask"]
            # Mean over dates: a batch's mean weighted by its date count, across steps and ranks.
            # An undefined IC (constant prediction) counts as 0, so it cannot look good.
            rank_ic = torch.nan_to_num(rank_ic_torch(pred1, y1, m), nan=0.0)
            ic = torch.nan_to_num(ic_torch(pred1.detach(), y1, m), nan=0.0)
            self.log("val_rank_ic", rank_ic.mean(), on_epoch=True, batch_size=B, sync_dist=True)
            self.log("val_ic", ic.mean(), on_epoch=True, batch_size=B, sync_dist=True)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(
                self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
            )

    Stage1Module.__module__ = __name__
    Stage1Module.__qualname__ = "Stage1Module"
    return Stage1Module


def _stage1_module_class() -> type:
    """``Stage1Module``, defined once per process."""
    if "Stage1Module" not in globals():
        globals()["Stage1Module"] = _define_stage1_module()
    return globals()["Stage1Module"]


@dataclass
class Stage1Result:
    """What :func:`fit_stage1` returns.

    Attributes:
        model: the trained model with the best checkpoint's weights, in eval mode, on CPU.
        history: one dict of logged metrics per epoch (``train_loss``, ``val_rank_ic``, ...).
        best_val_rank_ic: the best validation Rank IC (horizon 1) seen.
        train_seconds: wall time of ``Trainer.fit``.
        checkpoint_path: the best checkpoint file.
        config: the model config used.
    """

    model: CrossSectionalTransformer
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_rank_ic: float = float("nan")
    train_seconds: float = 0.0
    checkpoint_path: str = ""
    config: Stage1Config | None = None


def encode_sectors(sector_ids: Any, num_stocks: int) -> tuple[np.ndarray, int]:
    """``int [N]`` sector ids and their count from ints or labels (e.g. ``panel.sectors``)."""
    arr = np.asarray(sector_ids)
    if arr.shape != (num_stocks,):
        raise ValueError(
            f"sector_ids must have one entry per stock ({num_stocks}), got {arr.shape}"
        )
    if arr.dtype.kind in "iu":
        if (arr < 0).any():
            raise ValueError("integer sector_ids must be >= 0; pass labels to have them encoded")
        return arr.astype(np.int64), int(arr.max()) + 1
    _, codes = np.unique(arr.astype(str), return_inverse=True)
    return codes.astype(np.int64), int(codes.max()) + 1


def _check_inputs(features: FeatureSet, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float32)
    T, N, _ = features.values.shape
    if labels.ndim == 2:
        labels = labels[..., None]
    if labels.ndim != 3 or labels.shape[:2] != (T, N):
        raise ValueError(
            f"labels must be [T, N, H] = [{T}, {N}, H] like the features, got {labels.shape}; "
            "build them with relcast.features.forward_returns(panel, horizons)"
        )
    return labels


def fit_stage1(
    features: FeatureSet,
    labels: np.ndarray,
    split: Any,
    config: Stage1Config | None = None,
    *,
    out_dir: str | Path,
    sector_ids: Any = None,
    loss: str = "ic",
    label_norm: str = "cross_section",
    rank_mse_weight: float = 0.0,
    max_epochs: int = 30,
    batch_dates: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    patience: int = 5,
    seed: int = 0,
    train_index: np.ndarray | None = None,
    target: np.ndarray | None = None,
    preset: str = "small",
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    progress: bool = True,
    **trainer_kwargs: Any,
) -> Stage1Result:
    """Train Stage1 on the training dates, early-stopping on the validation Rank IC.

    Args:
        features: the feature set; all its columns are Stage1 inputs.
        labels: ``[T, N, H]`` forward returns (NaN where undefined).
        split: an object with ``train`` and ``valid`` date-index arrays.
        config: model config; default: ``preset`` sized from the data.
        out_dir: run folder for checkpoints and the CSV log.
        sector_ids: per-stock sector (ints or labels such as ``panel.sectors``), or None.
        loss: ``"ic"`` (default), ``"mse"``, ``"listnet"`` or ``"pairwise"``, see the module
            docstring.
        label_norm: ``"cross_section"`` (default) or ``"cs_rank"``: the labels the losses
            read, see the module docstring.
        rank_mse_weight: weight of the MSE added to the ``listnet``/``pairwise`` loss.
        train_index: train on these dates instead of ``split.train`` (out-of-fold runs).
        target: ``bool [N]``, symbols that count in losses and metrics, e.g.
            ``~panel.is_index`` (default all).
        preset: preset used when ``config`` is None.
        accelerator, devices, strategy: Lightning's (``strategy="ddp"`` works unchanged).
        progress: show a progress bar.
        trainer_kwargs: other ``lightning.Trainer`` arguments.
    """
    from relcast.training.common import load_best_state_dict, make_trainer, seed_everything

    labels = _check_inputs(features, labels)
    T, N, F_ = features.values.shape
    H = labels.shape[2]
    sectors, num_sectors = (None, 0) if sector_ids is None else encode_sectors(sector_ids, N)
    if config is None:
        config = Stage1Config.from_preset(
            preset, num_features=F_, num_stocks=N, num_sectors=num_sectors, horizons=H
        )
    if (config.num_features, config.num_stocks, config.horizons) != (F_, N, H):
        raise ValueError(
            f"config expects (num_features, num_stocks, horizons) = "
            f"{(config.num_features, config.num_stocks, config.horizons)} but the data has "
            f"{(F_, N, H)}; build the config with Stage1Config.from_preset(...) from the data"
        )
    if sectors is not None and config.num_sectors < num_sectors:
        raise ValueError(f"config.num_sectors={config.num_sectors} < {num_sectors} sectors given")

    train_index = np.asarray(split.train if train_index is None else train_index)
    corr_window = config.corr_window if config.multitask else 0
    common = dict(target=target, corr_window=corr_window)
    train_set = CrossSectionDataset(features.values, features.mask, labels, train_index, **common)
    valid_set = CrossSectionDataset(
        features.values, features.mask, labels, np.asarray(split.valid), **common
    )
    if len(train_set) == 0 or len(valid_set) == 0:
        raise ValueError(
            f"Stage1 needs labelled dates in both spans, got {len(train_set)} train and "
            f"{len(valid_set)} valid dates with >= 2 labelled stocks; check the split and labels"
        )

    seed_everything(seed)
    module = _stage1_module_class()(
        config,
        sector_ids=sectors,
        loss=loss,
        lr=lr,
        weight_decay=weight_decay,
        label_norm=label_norm,
        rank_mse_weight=rank_mse_weight,
    )
    shuffle_rng = torch.Generator()
    shuffle_rng.set_state(torch.get_rng_state())  # seeded above; immune to later RNG use
    trainer = make_trainer(
        out_dir,
        monitor="val_rank_ic",
        mode="max",
        patience=patience,
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        progress=progress,
        log_every_n_steps=max(1, min(10, len(train_set) // batch_dates)),
        **trainer_kwargs,
    )
    # batches of dates sharded by rank under DDP: each date once per epoch, equal step counts
    train_loader = DataLoader(
        DateBatches(train_set, batch_dates, shuffle=True, generator=shuffle_rng), batch_size=None
    )
    valid_loader = DataLoader(DateBatches(valid_set, batch_dates), batch_size=None)
    start = time.perf_counter()
    trainer.fit(module, train_loader, valid_loader)
    seconds = time.perf_counter() - start

    best = load_best_state_dict(trainer, prefix="model.")
    if best is not None:
        module.model.load_state_dict(best)
    score = trainer.checkpoint_callback.best_model_score
    return Stage1Result(
        model=module.model.cpu().eval(),
        history=list(trainer.epoch_history),
        best_val_rank_ic=float(score) if score is not None else float("nan"),
        train_seconds=seconds,
        checkpoint_path=trainer.checkpoint_callback.best_model_path,
        config=config,
    )


def __getattr__(name: str) -> Any:
    if name == "Stage1Module":
        return _stage1_module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
