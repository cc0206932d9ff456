"""Stage1's data: one item per date (all stocks), batches of dates sharded across DDP ranks,
and the realised-correlation target of the multi-task loss."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from relcast.training.windows import distributed_rank, shard_batches


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
        # ``values``/``labels`` may be memory-mapped (relcast.store.memmap) and larger than RAM.
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
            item["corr"] = self._corr(t)
        return item

    def _corr(self, t: int) -> torch.Tensor:
        window = self.returns[t : t + self.corr_window]  # (W, N)
        corr = pairwise_correlation(window, min_count=max(5, self.corr_window // 2))
        both = self.mask[t][:, None] & self.mask[t][None, :]
        return torch.where(both, corr, torch.nan)  # (N, N)

    def batch(self, positions: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """The items at ``positions`` stacked, equal to ``default_collate`` of them, with one
        gather per array instead of one per date (a batch of 32 dates of 1,026 stocks: 5 ms
        per date item by item)."""
        t = self.index[np.asarray(positions, dtype=np.int64)]  # (B,) dates
        mask = self.mask[torch.from_numpy(t)]  # (B, N)
        m = mask.numpy()
        x = np.where(m[..., None], self.values[t], 0.0).astype(np.float32)  # (B, N, F)
        label = np.asarray(self.labels[t], dtype=np.float32)  # (B, N, H)
        y = np.where(self._labelled(m, label), label, np.nan).astype(np.float32)
        out = {
            "x": torch.from_numpy(x),
            "mask": mask,
            "y": torch.from_numpy(y),
            "t": torch.from_numpy(t.copy()),
        }
        if self.corr_window:
            out["corr"] = torch.stack([self._corr(int(s)) for s in t])  # (B, N, N)
        return out


class DateBatches(IterableDataset):
    """Batches of dates of a :class:`CrossSectionDataset`, sharded across DDP ranks.

    Use with ``DataLoader(batch_size=None)``. Like the Stage3 ``WindowLoader``: every rank
    draws the same permutation of the dates, rank r takes every ``world_size``-th one, so each
    date is seen exactly once per epoch across ranks and ranks run the same number of steps
    (:func:`relcast.training.windows.shard_batches`). Lightning does not swap in its own
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
        return distributed_rank() if self.rank is None else (self.rank, self.world_size or 1)

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
            yield self.dataset.batch(pos)


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
