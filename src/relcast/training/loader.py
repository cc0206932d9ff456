"""Fast window loader for Stage3: batches of ``[B, L, F]`` gathered from one ``[T, N, F]`` tensor.

Stage3 learns from every (date, stock) window of ``lookback`` steps. Materialising them all
(as pytorch-forecasting does) costs ``T * N * L * F`` floats; here the inputs stay one
contiguous ``[T, N, F]`` tensor and each batch is gathered with one advanced-indexing call:

    x = inputs[t_idx[:, None] + arange(-L + 1, 1)[None, :], n_idx[:, None]]   # (B, L, F)

(implemented as one ``index_select`` over the ``[T * N, F]`` rows, which is the same gather)

The valid window ends ``(t, n)`` are found once, vectorised: a window ``[t-L+1, t]`` must lie
inside the panel, contain no masked date of stock n (a cumulative sum of ``~valid`` along
time), end on a date of the requested split, and (for training) have a finite label for
every horizon at t. There is no Python code per sample or per window.

``rawconcat`` mode (the design's "original approach") also reads all N stocks' own features
at each step from a ``[T, N, F_own]`` tensor. That block is the same for every stock of a
date, so a batch carries it once per distinct date, ``cross [U, N * F_own]``, with
``cross_index [B, S]`` saying which row each step reads
(:class:`relcast.models.temporal.cross_input.CrossSectionInput` projects each row once). ``U``
is at most the number of dates, whatever the batch size. At 1,026 stocks the block is 34,000
floats per date; it is never stored per target stock or per step. Batches are drawn as for
the other feature sets (date-aligned batches, one period per step, cut the cost of the block
by ~5x but left the GRU at validation Rank IC ~0 on the NASDAQ benchmark; see the README).

**Sequence (chunk) batches**, the default for training and prediction (``chunk_length``):
neighbouring windows share ``L - 1`` steps, so instead of one window per sample the loader
cuts each stock's span into chunks ``[B, C, F]`` and the model forecasts at every step of a
chunk in one pass. The tiling is fixed by the data, not by the dates asked for: each run of
valid dates of a stock (starting at r) is cut into tiles ``[r + kS, r + kS + C)`` with
stride ``S = C - L + 1``, and a usable window end t belongs to the tile whose scored zone
``[r + kS + L - 1, r + kS + C)`` holds it. A chunk is that tile up to its last requested
window end. So every window end is scored in exactly one chunk per epoch, the first
``L - 1`` steps of a chunk are its burn-in (no loss), every scored step has its whole window
of L steps inside the chunk, chunks never cross a masked date (the model never sees one,
as in windowed training), and a forecast for date t is the same whether t is predicted
alone (``update``: one chunk of L..C steps per stock), with its test span (evaluation) or
trained on. A batch holds whole chunks, right-padded to its longest one (zero input, never
scored; a causal model never reads it for an earlier step).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from relcast.training.specs import chunk_steps
from relcast.training.windows import (
    BLOCK_CELLS,
    distributed_rank,
    ends_by_date,
    num_shard_batches,
    shard_batches,
    window_end_mask,
)


def tile_start(t, run_start, lookback: int, stride: int):
    """The first step of the tile of the fixed tiling (module docstring) that scores window
    end ``t`` of a run of valid dates starting at ``run_start`` (arrays or ints): tiles start
    every ``stride`` steps from the run's start, and a tile scores its steps from its
    ``lookback``-th on. The one place the tiling rule is written."""
    return run_start + stride * ((t - (lookback - 1) - run_start) // stride)


@dataclass(frozen=True)
class WindowSource:
    """The arrays a :class:`WindowLoader` gathers windows from.

    Attributes:
        inputs: ``float [T, N, F]`` per-stock inputs (NaN allowed where ``valid`` is False).
        valid: ``bool [T, N]``.
        labels: ``float [T, N, H]`` or None (inference).
        labelled: ``bool [T, N]``, True where ``labels`` is finite for every horizon, if
            known already (a memory-mapped store keeps it): then ``labels`` is not scanned.
        sector_ids: ``int [N]`` sector of every stock; zeros if None.
        concat_inputs: ``float [T, N, F_own]`` for ``rawconcat``: every stock's own features
            at each distinct date of a batch, ``cross [U, N * F_own]`` (masked cells are 0),
            and ``cross_index [B, L or C']`` (the row of each step; -1 at padding).
        concat_valid_flag: with ``concat_inputs``, also append each stock's valid flag to
            ``cross`` (``[U, N]``) so the model can tell a masked stock from a zero feature.
        stock_major: ``inputs`` is laid out ``[N, T, F]`` (each stock's history contiguous,
            as in :class:`relcast.store.memmap.MemmapFeatureStore`): a window is then one
            contiguous block of ``L * F`` floats instead of L rows far apart, which matters
            when ``inputs`` is memory-mapped from disk. ``valid``/``labels`` stay ``[T, N, ...]``.
    """

    inputs: np.ndarray | torch.Tensor
    valid: np.ndarray | torch.Tensor
    labels: np.ndarray | torch.Tensor | None = None
    labelled: np.ndarray | None = None
    sector_ids: np.ndarray | None = None
    concat_inputs: np.ndarray | torch.Tensor | None = None
    concat_valid_flag: bool = False
    stock_major: bool = False


@dataclass(frozen=True)
class Batching:
    """How a :class:`WindowLoader` cuts an epoch into batches.

    Attributes:
        batch_size: windows per batch (scored steps per batch with ``chunk_length``).
        shuffle: permute the windows each epoch with a generator seeded by ``seed + epoch``.
        seed: base seed of the shuffle.
        drop_last: drop a last batch smaller than ``batch_size``.
        chunk_length: None for window batches, else the chunk length C of sequence batches
            (raised to ``2 * lookback`` if shorter, so at least half a full chunk is scored).
            ``batch_size`` then counts scored steps: a batch holds
            ``max(1, round(batch_size / (C - L + 1)))`` chunks.
        rank, world_size: shard of this process under DDP; read from ``torch.distributed``
            at iteration time if None. Each rank takes every ``world_size``-th window of the
            same permutation, so every window is seen exactly once per epoch across ranks, and
            all ranks yield the same number of batches (:func:`shard_batches`). With chunks,
            whole chunks are sharded.
    """

    batch_size: int = 1024
    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False
    chunk_length: int | None = None
    rank: int | None = None
    world_size: int | None = None


class WindowLoader(IterableDataset):
    """Iterable of whole batches of Stage3 windows or chunks (``DataLoader(batch_size=None)``).

    Window batches (``chunk_length=None``): ``x [B, L, F_in]``, ``y [B, H]`` (zeros if no
    labels were given), ``stock_id [B]``, ``sector_id [B]``, ``t [B]`` and ``n [B]`` (the
    window end), all tensors.

    Sequence batches (``chunk_length=C``, see the module docstring): ``x [B, C', F_in]``
    (C' <= C, the batch's longest chunk; zeros at the right padding), ``origin bool [B, C']``
    (the steps whose forecast is scored: a usable window end of this loader outside the
    burn-in), ``y [B, C', H]`` (the labels, NaN where ``origin`` is False), ``t [B, C']`` (date
    index of each step, -1 at padding), ``stock_id``, ``sector_id`` and ``n`` ``[B]``.

    Args:
        source: the arrays (:class:`WindowSource`).
        lookback: window length L.
        index: date indices the window ends must belong to (a split); all dates if None.
        stocks: stock indices to draw windows for; all if None.
        require_labels: keep only ends with finite labels (training/validation). Ignored
            when ``source.labels`` is None.
        batching: batch size, shuffle, chunks and DDP shard (:class:`Batching`; its
            defaults if None).
    """

    def __init__(
        self,
        source: WindowSource,
        lookback: int,
        *,
        index: np.ndarray | None = None,
        stocks: Sequence[int] | np.ndarray | None = None,
        require_labels: bool = True,
        batching: Batching | None = None,
    ) -> None:
        super().__init__()
        batching = Batching() if batching is None else batching
        inputs, valid, labels, labelled = (
            source.inputs, source.valid, source.labels, source.labelled
        )  # fmt: skip
        stock_major, chunk_length = source.stock_major, batching.chunk_length
        # zero-copy for a C-contiguous float32 array, including a np.memmap
        self.inputs = torch.as_tensor(np.ascontiguousarray(inputs, dtype=np.float32))  # (T, N, F)
        self.stock_major = stock_major  # then inputs is (N, T, F)
        N, T = self.inputs.shape[:2] if stock_major else self.inputs.shape[1::-1]
        valid_np = np.asarray(valid, dtype=bool)
        if valid_np.shape != (T, N):
            raise ValueError(f"valid has shape {valid_np.shape}, expected {(T, N)}")
        self.valid = torch.as_tensor(valid_np)
        self.lookback = int(lookback)
        if labels is not None:
            labels_np = np.asarray(labels, dtype=np.float32)
            self.labels = torch.as_tensor(labels_np.reshape(T, N, -1))  # (T, N, H)
        else:
            labels_np, self.labels = None, None
        check_labels = require_labels and labels_np is not None
        ends = window_end_mask(
            valid_np,
            self.lookback,
            labels=labels_np if check_labels and labelled is None else None,
            labelled=labelled if check_labels else None,
            index=index,
            stocks=stocks,
        )  # (T, N)
        self._num_windows = int(np.count_nonzero(ends))
        self.t_idx = self.n_idx = None  # window batches: the ends as lists (int32 when they fit)
        if chunk_length is None:
            t_idx, n_idx = ends_by_date(ends)
            self.t_idx, self.n_idx = torch.from_numpy(t_idx), torch.from_numpy(n_idx)
        self.batch_size = int(batching.batch_size)
        self.shuffle = batching.shuffle
        self.seed = int(batching.seed)
        self.drop_last = batching.drop_last
        self.epoch = 0
        sector_ids = np.zeros(N, dtype=np.int64) if source.sector_ids is None else source.sector_ids
        self.sector_ids = torch.as_tensor(np.asarray(sector_ids, dtype=np.int64))
        self.concat = None
        if source.concat_inputs is not None:
            concat = np.ascontiguousarray(source.concat_inputs, dtype=np.float32)
            # a masked stock contributes zeros, never stale values; an input cleaned already
            # (Stage3Inputs.concat) is used without a copy, so loaders share one [T, N, F_own]
            if not np.isfinite(concat).all() or np.any(concat[~valid_np]):
                concat = np.nan_to_num(concat, nan=0.0, posinf=0.0, neginf=0.0)
                concat[~valid_np] = 0.0
            self.concat = torch.as_tensor(concat)  # (T, N, F_own)
        self.concat_valid_flag = source.concat_valid_flag
        self.rank, self.world_size = batching.rank, batching.world_size
        self._offsets = torch.arange(-self.lookback + 1, 1)  # (L,)
        self.chunk_length = None
        if chunk_length is not None:
            if chunk_length < 1:
                raise ValueError(f"chunk_length must be >= 1, got {chunk_length}")
            self.chunk_length = chunk_steps(chunk_length, self.lookback)
            self._build_chunks(ends, valid_np)

    @property
    def num_windows(self) -> int:
        """Number of usable windows = scored samples per epoch (all ranks together)."""
        return self._num_windows

    @property
    def sequence(self) -> bool:
        """True if the batches are chunks (sequence batches), False for windows."""
        return self.chunk_length is not None

    @property
    def num_items(self) -> int:
        """What an epoch permutes and batches: chunks, or windows."""
        return len(self.chunk_n) if self.sequence else self.num_windows

    @property
    def items_per_batch(self) -> int:
        """Chunks (or windows) per batch."""
        if not self.sequence:
            return self.batch_size
        stride = self.chunk_length - self.lookback + 1
        return max(1, round(self.batch_size / stride))

    def _build_chunks(self, ends: np.ndarray, valid: np.ndarray) -> None:
        """Group the window ends ``ends [T, N]`` into chunks of the fixed tiling (vectorised,
        see the module docstring): end t of stock n goes to the tile starting at
        ``r + S * floor((t - L + 1 - r) / S)``, r = the start of n's valid run holding t.
        A block of stocks at a time, so the per-end temporaries are a block's."""
        L, C = self.lookback, self.chunk_length
        stride = C - L + 1  # scored steps of a full tile
        T, N = ends.shape
        parts = [(np.zeros(0, dtype=np.int64),) * 3]
        width = max(1, BLOCK_CELLS // max(1, T))
        for n0 in range(0, N, width):
            n1 = min(N, n0 + width)
            n, t = np.nonzero(ends[:, n0:n1].T)  # sorted by stock, then date
            if not len(t):
                continue
            # run starts: valid cells whose previous date is not valid, as sorted (n, t) keys
            starts = valid[:, n0:n1].copy()
            starts[1:] &= ~valid[:-1, n0:n1]
            run_n, run_t = np.nonzero(starts.T)
            run_key = run_n * T + run_t
            # the run of each end: the last run start at or before it (the same stock: t is valid)
            at = np.searchsorted(run_key, n * T + t, side="right") - 1
            r = run_t[at]
            tile = tile_start(t, r, L, stride)  # (M,) the tile's first step
            key = n * T + tile  # sorted: by stock, then tile (t and r rise together)
            first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
            last = np.r_[first[1:], len(key)] - 1  # each chunk ends at its last window end
            parts.append((n[first] + n0, tile[first], t[last]))
        chunk_n, chunk_start, chunk_end = (np.concatenate(x) for x in zip(*parts, strict=True))
        self.chunk_n = torch.as_tensor(chunk_n, dtype=torch.long)  # (K,)
        self.chunk_start = torch.as_tensor(chunk_start, dtype=torch.long)  # (K,)
        self.chunk_len = torch.as_tensor(chunk_end - chunk_start + 1, dtype=torch.long)  # (K,)
        self.origin_mask = torch.from_numpy(ends)  # (T, N) the scored ends

    @property
    def num_features(self) -> int:
        """Width F_in of ``x``."""
        return self.inputs.shape[-1]

    @property
    def cross_width(self) -> int:
        """Width of a row of ``cross`` (``rawconcat``), 0 without ``concat_inputs``."""
        if self.concat is None:
            return 0
        N, F_own = self.concat.shape[1:]
        return N * F_own + (N if self.concat_valid_flag else 0)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next iteration uses."""
        self.epoch = int(epoch)

    def _shard(self) -> tuple[int, int]:
        if self.rank is not None:
            return self.rank, self.world_size or 1
        return distributed_rank()

    def order(self) -> torch.Tensor:
        """Positions into ``t_idx/n_idx`` this rank visits in the current epoch, in order."""
        rank, world_size = self._shard()
        return self._permutation()[rank::world_size]

    def _permutation(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            return torch.randperm(self.num_items, generator=g)
        return torch.arange(self.num_items)

    def _cross(self, steps: torch.Tensor, real: torch.Tensor | None = None) -> dict:
        """``cross [U, N * F_own (+ N)]`` at the distinct dates of ``steps [B, S]`` and
        ``cross_index [B, S]`` (-1 where ``real`` is False)."""
        T = self.concat.shape[0]
        dates, index = torch.unique(steps, return_inverse=True)  # (U,), (B, S)
        cross = self.concat.view(T, -1).index_select(0, dates)  # (U, N * F_own)
        if self.concat_valid_flag:
            cross = torch.cat([cross, self.valid[dates].to(cross.dtype)], dim=-1)
        if real is not None:
            index = torch.where(real, index, -1)
        return {"cross": cross, "cross_index": index}

    def batches(self) -> list[torch.Tensor]:
        """Positions into ``t_idx/n_idx`` (or the chunks) of this rank's batches this epoch.

        Every rank gets the same number of batches (see :func:`shard_batches`).
        """
        rank, world_size = self._shard()
        return shard_batches(
            self._permutation(), self.items_per_batch, rank, world_size, drop_last=self.drop_last
        )

    def __len__(self) -> int:
        rank, world_size = self._shard()
        return num_shard_batches(
            self.num_items, self.items_per_batch, rank, world_size, drop_last=self.drop_last
        )

    def gather(self, t: torch.Tensor, n: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch of windows ending at dates ``t [B]`` for stocks ``n [B]``."""
        T, N = self.valid.shape
        F = self.inputs.shape[-1]
        steps = t[:, None] + self._offsets[None, :]  # (B, L)
        B, L = steps.shape
        # index_select on flat rows is ~2x faster than inputs[steps, n[:, None]] (same values)
        rows = self._rows(steps, n)  # (B * L,)
        x = self.inputs.view(T * N, F).index_select(0, rows).view(B, L, F)  # (B, L, F)
        if self.labels is not None:
            y = self.labels[t, n]  # (B, H)
        else:
            y = torch.zeros(len(t), 1)
        batch = {"x": x, "y": y, "stock_id": n, "sector_id": self.sector_ids[n], "t": t, "n": n}
        if self.concat is not None:
            batch.update(self._cross(steps))
        return batch

    def _rows(self, steps: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Flat row of every ``(steps [B, S], n [B])`` cell in ``inputs`` viewed as rows."""
        T, N = self.valid.shape
        if self.stock_major:
            return (n[:, None] * T + steps).reshape(-1)  # row of (n, t) in (N * T, F)
        return (steps * N + n[:, None]).reshape(-1)  # row of (t, n) in (T * N, F)

    def step_inputs(self, t: int, n: torch.Tensor) -> torch.Tensor:
        """``x [len(n), F]``: the inputs of stocks ``n`` at date ``t`` (one step of a chunk)."""
        T, N = self.valid.shape
        steps = torch.full((len(n), 1), int(t), dtype=torch.long)
        return self.inputs.view(T * N, -1).index_select(0, self._rows(steps, n))

    def gather_chunks(self, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        """The sequence batch of chunks ``pos`` (positions into ``chunk_n/chunk_start``)."""
        T, N = self.valid.shape
        F = self.inputs.shape[-1]
        n, start, length = self.chunk_n[pos], self.chunk_start[pos], self.chunk_len[pos]
        B, C = len(pos), int(length.max())
        at = torch.arange(C)  # (C,)
        real = at[None, :] < length[:, None]  # (B, C), False at the right padding
        steps = torch.where(real, start[:, None] + at[None, :], start[:, None])  # (B, C)
        x = self.inputs.view(T * N, F).index_select(0, self._rows(steps, n)).view(B, C, F)
        x = x.masked_fill(~real[..., None], 0.0)
        burn_in = at[None, :] >= self.lookback - 1  # (1, C)
        origin = self.origin_mask[steps, n[:, None]] & real & burn_in  # (B, C)
        if self.labels is not None:
            y = self.labels[steps, n[:, None]]  # (B, C, H)
            y = y.masked_fill(~origin[..., None], float("nan"))
        else:
            y = torch.zeros(B, C, 1)
        batch = {
            "x": x,
            "y": y,
            "origin": origin,
            "stock_id": n,
            "sector_id": self.sector_ids[n],
            "t": torch.where(real, steps, -1),
            "n": n,
        }
        if self.concat is not None:
            batch.update(self._cross(steps, real))
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batches = self.batches()
        if self.shuffle:
            self.epoch += 1  # the next pass reshuffles unless set_epoch() says otherwise
        for pos in batches:
            if self.sequence:
                yield self.gather_chunks(pos)
            else:
                yield self.gather(self.t_idx[pos].long(), self.n_idx[pos].long())

    def dataloader(self, **kwargs) -> DataLoader:
        """A ``DataLoader`` that passes the ready-made batches through unchanged."""
        return DataLoader(self, batch_size=None, **kwargs)
