"""Stage1's data: one item per date (all stocks), batches of dates sharded across DDP ranks,
random cross-sections of at most ``max_stocks`` stocks per training date, and the
realised-correlation target of the multi-task loss.

Why random cross-sections (``stage1.max_stocks``): full attention costs N^2 per date and the
model is equivariant to the order of the stocks (a token is its features plus its identity
embedding, read through ``stock_ids``), so a training date can attend over a random subset of
its traded stocks at (K/N)^2 of the attention cost. Each epoch draws anew; validation,
extraction and prediction read every stock. It is not free: a subset trains attention over K
keys that later normalises over N (a kind of key dropout), and a relationship between two
given stocks is seen only on the dates both are drawn (a quarter of them at K = N / 2);
``benchmarks/stage1_max_stocks.py`` measures what that costs.
"""

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
        max_stocks: each date of a batch keeps a random subset of at most this many of its
            traded target stocks (:func:`draw_cross_sections`, drawn anew every epoch from
            ``seed``, the epoch and the rank); None, or at least the number of target stocks,
            passes the batches through unchanged.
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
        max_stocks: int | None = None,
    ) -> None:
        super().__init__()
        self.dataset, self.batch_dates = dataset, int(batch_dates)
        self.shuffle, self.seed, self.generator, self.epoch = shuffle, int(seed), generator, 0
        self.rank, self.world_size = rank, world_size
        if max_stocks is not None and int(max_stocks) < 1:
            raise ValueError(f"max_stocks must be >= 1 (None: every stock), got {max_stocks}")
        target = torch.from_numpy(np.asarray(dataset.target, dtype=bool))
        # At least every target stock: nothing to draw, the batches stay as they are (bit for
        # bit the full-attention run, no random numbers used).
        self.max_stocks = None if max_stocks is None or max_stocks >= target.sum() else max_stocks
        self.target = target

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
        rank, world_size = self._shard()
        batches = shard_batches(self._permutation(), self.batch_dates, rank, world_size)
        draws = None
        if self.max_stocks is not None:  # a seed per (seed, epoch, rank): reproducible draws
            state = np.random.SeedSequence([self.seed, self.epoch, rank]).generate_state(1)
            draws = torch.Generator().manual_seed(int(state[0]))
        self.epoch += 1
        for pos in batches:
            batch = self.dataset.batch(pos)
            if draws is not None:
                batch = draw_cross_sections(batch, self.max_stocks, self.target, draws)
            yield batch


def draw_cross_sections(
    batch: dict[str, torch.Tensor],
    max_stocks: int,
    target: torch.Tensor,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """A batch of dates narrowed to a random cross-section of each date.

    Each date keeps ``min(max_stocks, its traded target stocks)`` of its traded target stocks,
    drawn uniformly without replacement, plus all its traded non-target columns (the market
    indices, a few tokens every date reads). Masked stocks are never drawn. The columns are
    the chosen stocks in ascending order, padded with masked columns up to the widest date of
    the batch, and ``stock_ids (B, K)`` says which stock each column is, so the model reads the
    same identities (and sectors) as in the full cross-section.

    Args:
        batch: ``x (B, N, F)``, ``mask (B, N)``, ``y (B, N, H)``, ``t (B,)`` and optionally
            ``corr (B, N, N)`` (:meth:`CrossSectionDataset.batch`).
        max_stocks: target stocks kept per date.
        target: ``bool [N]`` the stocks that count in losses (drawn from).
        generator: the source of the draws.

    Returns:
        the same keys with ``N`` replaced by ``K``, plus ``stock_ids (B, K)``.
    """
    mask = batch["mask"]  # (B, N)
    B, N = mask.shape
    pool = mask & target[None, :]  # traded target stocks: drawn from
    always = mask & ~target[None, :]  # traded index columns: always kept
    keys = torch.rand((B, N), generator=generator)
    keys = torch.where(pool, keys, 2.0)  # untraded stocks sort last, never chosen
    keys = torch.where(always, -1.0, keys)  # index columns sort first
    n_keep = always.sum(dim=1) + pool.sum(dim=1).clamp(max=max_stocks)  # (B,)
    K = max(1, int(n_keep.max()))
    order = keys.argsort(dim=1)[:, :K]  # (B, K) chosen first, then fillers
    chosen = torch.arange(K)[None, :] < n_keep[:, None]  # (B, K)
    cols, perm = order.sort(dim=1)  # ascending stock order, as in the full batch
    chosen = chosen.gather(1, perm)
    out = {"t": batch["t"], "stock_ids": cols, "mask": mask.gather(1, cols) & chosen}
    for key in ("x", "y"):
        value = batch[key]  # (B, N, D)
        out[key] = value.gather(1, cols[..., None].expand(-1, -1, value.shape[-1]))  # (B, K, D)
    out["y"] = torch.where(out["mask"][..., None], out["y"], torch.nan)  # fillers: no label
    if "corr" in batch:
        rows = batch["corr"].gather(1, cols[..., None].expand(-1, -1, N))  # (B, K, N)
        out["corr"] = rows.gather(2, cols[:, None, :].expand(-1, K, -1))  # (B, K, K)
    return out


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
