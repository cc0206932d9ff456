"""Which windows exist and how they are shared among processes, for :mod:`relcast.training.loader`.

:func:`window_end_mask` finds every usable window end ``(t, n)`` (no loop per window, a
block of dates at a time); :func:`shard_batches` cuts a shared item order into each DDP
rank's batches with equal batch counts on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

BLOCK_CELLS = 1 << 24  # (date, stock) cells per block of the window-end search (~16M)


def window_end_mask(
    valid: np.ndarray,
    lookback: int,
    *,
    labels: np.ndarray | None = None,
    index: np.ndarray | None = None,
    stocks: Sequence[int] | np.ndarray | None = None,
    labelled: np.ndarray | None = None,
    block_cells: int = BLOCK_CELLS,
) -> np.ndarray:
    """``bool [T, N]``: True at every usable window end ``(t, n)``.

    Args:
        valid: ``bool [T, N]``, True where the stock's inputs are defined at that date.
        lookback: window length L; the window ending at t covers dates ``t-L+1 .. t``.
        labels: ``[T, N, H]``; if given, only ends whose label is finite for all horizons.
        index: date indices (e.g. a split's ``train``) the window end must belong to.
        stocks: stock indices to keep (e.g. one target stock); all stocks if None.
        labelled: ``bool [T, N]``, only ends where it is True: the finite-label test done
            beforehand (saves reading a memory-mapped ``labels`` whole).
        block_cells: the search runs a block of dates at a time (with the L - 1 dates before
            it), so its temporaries are a block's, not ``[T, N]`` (a memory-mapped ``labels``
            is read a block at a time too).
    """
    valid = np.asarray(valid, dtype=bool)
    T, N = valid.shape
    if lookback < 1:
        raise ValueError(f"lookback must be >= 1, got {lookback}")
    if labels is not None and labels.shape[:2] != (T, N):
        raise ValueError(f"labels have shape {labels.shape}, expected ({T}, {N}, H)")
    if labelled is not None and labelled.shape != (T, N):
        raise ValueError(f"labelled has shape {labelled.shape}, expected {(T, N)}")
    on_dates = np.ones(T, dtype=bool)
    if index is not None:
        on_dates[:] = False
        on_dates[np.asarray(index, dtype=np.int64)] = True
    on_stocks = np.ones(N, dtype=bool)
    if stocks is not None:
        on_stocks[:] = False
        on_stocks[np.asarray(stocks, dtype=np.int64)] = True
    ok = np.zeros((T, N), dtype=bool)
    L, step = int(lookback), max(1, block_cells // max(1, N))
    for a in range(L - 1, T, step):
        b = min(T, a + step)
        # masked[i] = masked dates among valid[lo : lo + i]; the window ending at t = lo + i
        # holds masked[i + 1] - masked[i + 1 - L] of them
        lo = a - L + 1
        masked = np.zeros((b - lo + 1, N), dtype=np.int32)
        np.cumsum(~valid[lo:b], axis=0, out=masked[1:])
        block = (masked[L:] - masked[: b - a]) == 0  # (b - a, N)
        if labels is not None:
            block &= np.isfinite(np.asarray(labels[a:b]).reshape(b - a, N, -1)).all(axis=-1)
        if labelled is not None:
            block &= np.asarray(labelled[a:b], dtype=bool)
        block &= on_dates[a:b, None] & on_stocks[None, :]
        ok[a:b] = block
    return ok


def valid_window_ends(valid: np.ndarray, lookback: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Date and stock indices ``(t [M], n [M])`` of every usable window end, sorted by (t, n);
    the arguments of :func:`window_end_mask`."""
    return np.nonzero(window_end_mask(valid, lookback, **kwargs))  # row-major: by t, then n


def ends_by_date(ok: np.ndarray, block_cells: int = BLOCK_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero(ok)`` of a ``bool [T, N]`` mask as int32 arrays when they fit (half of
    int64's bytes; the full-size int64 pair is never made), found a block of dates at a time."""
    T, N = ok.shape
    dtype = np.int32 if max(T, N) < 2**31 else np.int64
    step = max(1, block_cells // max(1, N))
    ts, ns = [np.zeros(0, dtype)], [np.zeros(0, dtype)]
    for a in range(0, T, step):
        t, n = np.nonzero(ok[a : a + step])
        ts.append((t + a).astype(dtype))
        ns.append(n.astype(dtype))
    return np.concatenate(ts), np.concatenate(ns)


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process in the torch process group, ``(0, 1)`` outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_batches(
    order: torch.Tensor,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> list[torch.Tensor]:
    """This rank's batches of ``order``, a permutation of item positions shared by all ranks.

    Rank r takes every ``world_size``-th item (``order[r::world_size]``), so every item is seen
    exactly once per epoch across ranks, and batch k of all ranks together is the single
    process's batch k of size ``batch_size * world_size``. Under DDP every rank must run the
    same number of steps (a rank with one more backward pass waits forever in the gradient
    all-reduce), but the shards differ by one item when ``len(order) % world_size != 0``:
    every rank makes as many batches as the smallest shard needs, and a left-over item joins
    the rank's last batch (which then holds ``batch_size + 1`` items). ``drop_last`` drops
    the items after the smallest shard's last full batch. With one process this is plain
    batching of ``order``.
    """
    mine = order[rank::world_size]
    count = num_shard_batches(len(order), batch_size, rank, world_size, drop_last)
    if count == 0:
        return []
    end = count * batch_size if drop_last else len(mine)
    starts = [k * batch_size for k in range(count)]
    return [mine[a:b] for a, b in zip(starts, starts[1:] + [end], strict=True)]


def num_shard_batches(
    num_items: int, batch_size: int, rank: int = 0, world_size: int = 1, drop_last: bool = False
) -> int:
    """How many batches :func:`shard_batches` gives each rank (without building them)."""
    smallest = num_items // world_size  # the share of the last rank
    if drop_last:
        return smallest // batch_size
    # a run with fewer items than ranks cannot be even; its ranks just get what there is
    mine = len(range(rank, num_items, world_size))
    return -(-(smallest or mine) // batch_size)
