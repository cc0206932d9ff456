"""Daily forecasts that carry a sequence model's state from one update to the next.

A sequence-trained model forecasts date t from the chunk of the fixed tiling that scores t
(:mod:`relcast.training.loader`): its LSTM runs from the chunk's first step, which lies
``lookback - 1`` to ``chunk_steps - 1`` dates before t. Running that chunk again every day
costs about ``chunk_steps`` steps per stock for one forecast (the TFT: 2.3 s for one date of
500 stocks on 2 cores). A model with ``stream_start`` / ``stream_step`` (the TFT) instead runs
the steps one date at a time, and :func:`stream_forecast` returns, beside the forecasts, a
:class:`StreamState`: per stock, the state after the last date of every tile that scores or
will score the next date. Given that state, the next update resumes there and runs one step
per stock and tile.

The forecasts are the chunk pass's: the same tiles, the same steps, float rounding aside
(``predict_stage3`` with the model's ``chunk_length``; the tests compare them). A state that
does not apply (the first update after a run, a gap, other weights: the caller checks those)
is not used: each tile then runs from its first step, step by step, as the chunk pass would.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from relcast.training.loader import tile_start
from relcast.training.specs import chunk_steps


def can_stream(model: torch.nn.Module, inputs) -> bool:
    """True if ``model`` forecasts one step at a time on these inputs (a TFT on per-stock
    inputs; ``rawconcat``'s whole-market rows and the whole-date models do not)."""
    return hasattr(model, "stream_step") and not getattr(inputs, "cross_width", 0)


@dataclass
class StreamState:
    """The state of a sequence model's tiles after date index ``t``.

    ``n [R]`` and ``start [R]``: the stock and first date of each tile; ``tensors``: the
    model's state (``stream_start``'s keys), each ``[R, ...]``; ``weights``: a digest of the
    weights it was computed with (the caller's; a state from other weights is not used).
    """

    t: int
    n: np.ndarray
    start: np.ndarray
    tensors: dict[str, np.ndarray]
    weights: str = ""

    def to_bytes(self) -> bytes:
        """An ``.npz`` (no pickles: a run folder is untrusted input when read back)."""
        buf = io.BytesIO()
        np.savez(
            buf,
            t=np.int64(self.t),
            n=self.n.astype(np.int64),
            start=self.start.astype(np.int64),
            weights=np.asarray(self.weights),
            **{f"state_{k}": v for k, v in self.tensors.items()},
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamState:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            tensors = {k[len("state_") :]: z[k] for k in z.files if k.startswith("state_")}
            n, start = z["n"].astype(np.int64), z["start"].astype(np.int64)
            if n.shape != start.shape or any(len(v) != len(n) for v in tensors.values()):
                raise ValueError("stream state: its arrays do not have one row per tile")
            return cls(int(z["t"]), n, start, tensors, str(z["weights"]))


def run_starts(valid: np.ndarray, t: int) -> np.ndarray:
    """``[N]``: the first date of each stock's run of valid dates that holds date ``t``
    (-1 where the stock is not valid at ``t``)."""
    past = np.asarray(valid[: t + 1], dtype=bool)  # (t + 1, N)
    gap = ~past
    last_gap = np.where(gap.any(axis=0), t - np.argmax(gap[::-1], axis=0), -1)
    return np.where(past[t], last_gap + 1, -1)


def next_tiles(
    valid: np.ndarray, t: int, lookback: int, steps: int, stocks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, start)`` of the tiles whose state the update after date ``t`` needs: for each
    stock of ``stocks`` valid at ``t``, the tile that would score ``t + 1`` (were the stock
    valid then) and the next tile too when its first step is at or before ``t``."""
    stride = steps - lookback + 1
    r = run_starts(valid, t)[stocks]
    live = r >= 0
    n, r = stocks[live], r[live]
    # the first window end at or after t + 1 (a run shorter than the lookback has none yet)
    tile = tile_start(np.maximum(t + 1, r + lookback - 1), r, lookback, stride)
    after = tile + stride <= t  # the next tile's burn-in has begun
    return np.r_[n, n[after]], np.r_[tile, tile[after] + stride]


def _fits(state: StreamState, tensors: dict[str, torch.Tensor]) -> bool:
    """True if ``state`` holds every tensor of the model's state, each of its shape."""
    return set(state.tensors) == set(tensors) and all(
        state.tensors[k].shape[1:] == tuple(v.shape[1:]) for k, v in tensors.items()
    )


@torch.no_grad()
def stream_forecast(
    model: torch.nn.Module,
    inputs,
    index: np.ndarray,
    *,
    stocks: np.ndarray | None = None,
    chunk_length: int,
    state: StreamState | None = None,
) -> tuple[dict[str, np.ndarray], StreamState]:
    """Forecast the windows ending on ``index`` one date at a time, resuming from ``state``.

    ``state`` is used when it holds a date before every date of ``index`` (its tiles resume
    at ``state.t + 1``); each other tile runs from its first date. Returns ``predict_stage3``'s
    ``{"pred", "point"}`` (``[T, N, H, Q]``, NaN where nothing was forecast) and the state
    after ``index``'s last date, for the next call.
    """
    from relcast.models.temporal.losses import point_forecast

    index = np.unique(np.asarray(index, dtype=np.int64))
    if not len(index):
        raise ValueError("stream_forecast: no dates to forecast")
    config = model.config
    L = config.lookback
    C = chunk_steps(chunk_length, L)
    stock_idx = inputs.stock_index(None if stocks is None else list(stocks))
    stock_idx = np.arange(inputs.valid.shape[1]) if stock_idx is None else np.asarray(stock_idx)
    loader = inputs.loader(
        L, index=index, stocks=stock_idx, chunk_length=chunk_length, rank=0, world_size=1
    )
    last = int(index[-1])

    # the tiles to run: those scoring a date of index, and those the next update resumes
    carry_n, carry_start = next_tiles(inputs.valid, last, L, C, stock_idx)
    ends: dict[tuple[int, int], int] = {}
    for n, s, length in zip(
        loader.chunk_n.tolist(), loader.chunk_start.tolist(), loader.chunk_len.tolist(),
        strict=True,
    ):  # fmt: skip
        ends[(n, s)] = s + length - 1
    for n, s in zip(carry_n.tolist(), carry_start.tolist(), strict=True):
        ends[(n, s)] = max(ends.get((n, s), last), last)
    keys = sorted(ends)
    n_r = torch.tensor([k[0] for k in keys], dtype=torch.long)
    start_r = torch.tensor([k[1] for k in keys], dtype=torch.long)
    end_r = torch.tensor([ends[k] for k in keys], dtype=torch.long)

    was_training = model.training
    model.eval()
    tensors = model.stream_start(n_r, loader.sector_ids[n_r])
    resume = start_r.clone()  # the first date each tile still has to run
    if state is not None and not _fits(state, tensors):
        warnings.warn("stream state: its arrays do not fit the model; running without it",
                      UserWarning, stacklevel=2)  # fmt: skip
        state = None
    if state is not None and state.t < int(index[0]):
        tiles = zip(state.n.tolist(), state.start.tolist(), strict=True)
        saved = {tile: i for i, tile in enumerate(tiles)}
        pairs = [(r, saved[k]) for r, k in enumerate(keys) if k in saved and k[1] <= state.t]
        if pairs:
            rows, old = (torch.tensor(x, dtype=torch.long) for x in zip(*pairs, strict=True))
            for name, value in tensors.items():
                value[rows] = torch.as_tensor(state.tensors[name][old.numpy()], dtype=value.dtype)
            resume[rows] = state.t + 1

    T, N = inputs.valid.shape
    pred = np.full((T, N, config.horizons, config.num_quantiles), np.nan, dtype=np.float32)
    origin = loader.origin_mask  # (T, N) the window ends asked for
    for t in range(int(resume.min()) if len(keys) else last + 1, last + 1):
        rows = torch.nonzero((resume <= t) & (t <= end_r)).squeeze(1)
        if not len(rows):
            continue
        n = n_r[rows]
        part = {name: value[rows] for name, value in tensors.items()}
        out, part = model.stream_step(loader.step_inputs(t, n), part)
        for name, value in part.items():
            tensors[name][rows] = value
        age = t - start_r[rows]  # the step's position in its tile: scored from L - 1 on
        scored = origin[t, n] & (age >= L - 1) & (age < C)
        pred[t, n[scored].numpy()] = out[scored].float().numpy()
    model.train(was_training)

    carried = set(zip(carry_n.tolist(), carry_start.tolist(), strict=True))
    keep = torch.tensor([k in carried for k in keys], dtype=torch.bool)
    after = StreamState(
        t=last,
        n=n_r[keep].numpy(),
        start=start_r[keep].numpy(),
        tensors={name: value[keep].numpy() for name, value in tensors.items()},
    )
    point = point_forecast(torch.from_numpy(pred), config.quantiles).numpy()
    return {"pred": pred, "point": point}, after
