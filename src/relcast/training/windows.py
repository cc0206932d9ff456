"""Which windows exist and how they are shared among processes, for :mod:`relcast.training.loader`.

:func:`valid_window_ends` finds every usable window end ``(t, n)`` at once (no loop per
window); :func:`shard_batches` cuts a shared item order into each DDP rank's batches with
equal batch counts on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def valid_window_ends(
    valid: np.ndarray,
    lookback: int,
    *,
    labels: np.ndarray | None = None,
    index: np.ndarray | None = None,
    stocks: Sequence[int] | np.ndarray | None = None,
    labelled: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Date and stock indices ``(t [M], n [M])`` of every usable window end, sorted by (t, n).

    Args:
        valid: ``bool [T, N]``, True where the stock's inputs are defined at that date.
        lookback: window length L; the window ending at t covers dates ``t-L+1 .. t``.
        labels: ``[T, N, H]``; if given, only ends whose label is finite for all horizons.
        index: date indices (e.g. a split's ``train``) the window end must belong to.
        stocks: stock indices to keep (e.g. one target stock); all stocks if None.
        labelled: ``bool [T, N]``, only ends where it is True: the finite-label test done
            beforehand (saves reading a memory-mapped ``labels`` whole).
    """
    valid = np.asarray(valid, dtype=bool)
    T, N = valid.shape
    if lookback < 1:
        raise ValueError(f"lookback must be >= 1, got {lookback}")
    # masked[t + 1] - masked[t - L + 1] counts the masked dates inside the window ending at t
    # int32 when it fits: on a large panel this [T, N] count is the biggest temporary
    masked = np.zeros((T + 1, N), dtype=np.int32 if T < 2**31 - 1 else np.int64)
    np.cumsum(~valid, axis=0, out=masked[1:])
    ok = np.zeros((T, N), dtype=bool)
    if T >= lookback:
        ok[lookback - 1 :] = (masked[lookback:] - masked[: T - lookback + 1]) == 0
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape[:2] != (T, N):
            raise ValueError(f"labels have shape {labels.shape}, expected ({T}, {N}, H)")
        ok &= np.isfinite(labels.reshape(T, N, -1)).all(axis=-1)
    if labelled is not None:
        if labelled.shape != (T, N):
            raise ValueError(f"labelled has shape {labelled.shape}, expected {(T, N)}")
        ok &= np.asarray(labelled, dtype=bool)
    if index is not None:
        on_dates = np.zeros(T, dtype=bool)
        on_dates[np.asarray(index, dtype=np.int64)] = True
        ok &= on_dates[:, None]
    if stocks is not None:
        on_stocks = np.zeros(N, dtype=bool)
        on_stocks[np.asarray(stocks, dtype=np.int64)] = True
        ok &= on_stocks[None, :]
    t_idx, n_idx = np.nonzero(ok)  # row-major: sorted by t, then n
    return t_idx, n_idx


def _distributed_rank() -> tuple[int, int]:
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
