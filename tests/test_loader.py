"""The window loader against a slow reference written with Python loops."""

import numpy as np
import pytest
import torch

from relcast.training.loader import Batching, WindowLoader, WindowSource
from relcast.training.windows import valid_window_ends

T, N, F, L, H = 12, 3, 2, 4, 2


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(T, N, F)).astype(np.float32)
    valid = np.ones((T, N), dtype=bool)
    valid[5, 0] = False  # a suspension in the middle of stock 0
    valid[:3, 2] = False  # stock 2 lists late
    valid[11, 1] = False
    inputs[~valid] = np.nan
    labels = rng.normal(size=(T, N, H)).astype(np.float32)
    labels[-2:, :, 1] = np.nan  # the longest horizon runs off the end of the panel
    labels[7, 1, 0] = np.nan
    return inputs, valid, labels


def reference_windows(inputs, valid, labels, lookback, index=None, stocks=None, need_labels=True):
    """Every (t, n) -> (window, label), found the slow, obvious way."""
    out = {}
    for t in range(inputs.shape[0]):
        for n in range(inputs.shape[1]):
            if t - lookback + 1 < 0:
                continue
            if not all(valid[s, n] for s in range(t - lookback + 1, t + 1)):
                continue
            if need_labels and not np.isfinite(labels[t, n]).all():
                continue
            if index is not None and t not in set(index):
                continue
            if stocks is not None and n not in stocks:
                continue
            out[(t, n)] = (inputs[t - lookback + 1 : t + 1, n], labels[t, n])
    return out


def collect(loader):
    got = {}
    for batch in loader.dataloader():
        for b in range(len(batch["t"])):
            key = (int(batch["t"][b]), int(batch["n"][b]))
            assert key not in got, f"window {key} yielded twice"
            got[key] = (batch["x"][b].numpy(), batch["y"][b].numpy())
    return got


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"index": np.arange(6, 12)},
        {"stocks": [0]},
        {"index": np.array([3, 4, 9, 10]), "stocks": [1, 2]},
    ],
)
def test_loader_matches_reference(tiny, kwargs):
    inputs, valid, labels = tiny
    loader = WindowLoader(
        WindowSource(inputs, valid, labels),
        L,
        **kwargs,
        batching=Batching(batch_size=5, shuffle=True, seed=3),
    )
    got = collect(loader)
    want = reference_windows(inputs, valid, labels, L, **kwargs)
    assert set(got) == set(want) and len(want) > 0
    for key, (x, y) in want.items():
        np.testing.assert_array_equal(got[key][0], x)
        np.testing.assert_array_equal(got[key][1], y)
        assert np.isfinite(got[key][0]).all()


def test_windows_touching_masked_dates_are_absent(tiny):
    inputs, valid, labels = tiny
    t_idx, n_idx = valid_window_ends(valid, L)
    ends = set(zip(t_idx.tolist(), n_idx.tolist(), strict=True))
    for t in range(5, 5 + L):  # every window of stock 0 that covers date 5
        assert (t, 0) not in ends
    assert (9, 0) in ends  # ... and the first one after it is back
    assert min(t for t, n in ends if n == 2) == 3 + L - 1  # late listing: first full window
    assert all(t >= L - 1 for t, _ in ends)


def test_inference_keeps_windows_without_labels(tiny):
    inputs, valid, labels = tiny
    loader = WindowLoader(
        WindowSource(inputs, valid, labels),
        L,
        require_labels=False,
        batching=Batching(batch_size=100),
    )
    got = collect(loader)
    want = reference_windows(inputs, valid, labels, L, need_labels=False)
    assert set(got) == set(want)
    assert (11, 0) in got  # its longest-horizon label is NaN, yet it is predicted


def test_shuffle_is_deterministic_per_seed_and_epoch(tiny):
    inputs, valid, labels = tiny

    def order(seed, epoch):
        loader = WindowLoader(
            WindowSource(inputs, valid, labels),
            L,
            batching=Batching(shuffle=True, seed=seed, batch_size=4),
        )
        loader.set_epoch(epoch)
        return torch.cat([b["t"] * N + b["n"] for b in loader])

    assert torch.equal(order(1, 0), order(1, 0))
    assert not torch.equal(order(1, 0), order(2, 0))
    assert not torch.equal(order(1, 0), order(1, 1))
    assert torch.equal(order(1, 0).sort().values, order(2, 0).sort().values)
    # consecutive passes without set_epoch reshuffle, deterministically
    loader = WindowLoader(
        WindowSource(inputs, valid, labels),
        L,
        batching=Batching(shuffle=True, seed=1, batch_size=4),
    )
    first, second = ([torch.cat([b["t"] * N + b["n"] for b in loader])] for _ in range(2))
    assert torch.equal(first[0], order(1, 0)) and torch.equal(second[0], order(1, 1))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_shards_cover_every_window_once(tiny, world_size):
    inputs, valid, labels = tiny
    seen, batch_counts = [], set()
    for rank in range(world_size):
        loader = WindowLoader(
            WindowSource(inputs, valid, labels),
            L,
            batching=Batching(shuffle=True, seed=5, batch_size=3, rank=rank, world_size=world_size),
        )
        batches = list(loader)
        keys = [k for b in batches for k in zip(b["t"].tolist(), b["n"].tolist(), strict=True)]
        assert len(loader) == len(batches)
        batch_counts.add(len(batches))
        seen += keys
    # every rank takes the same number of steps, or DDP's gradient all-reduce would hang
    assert len(batch_counts) == 1
    full = WindowLoader(WindowSource(inputs, valid, labels), L, batching=Batching(batch_size=1000))
    assert len(seen) == len(set(seen)) == full.num_windows
    assert set(seen) == set(zip(full.t_idx.tolist(), full.n_idx.tolist(), strict=True))


def test_rawconcat_gathers_every_stock_with_zeros_for_masked(tiny):
    inputs, valid, labels = tiny
    context = np.arange(T * N, dtype=np.float32).reshape(T, N, 1)  # stands in for calendar
    for chunk_length in (None, 2 * L):
        loader = WindowLoader(
            WindowSource(context, valid, labels, concat_inputs=inputs, concat_valid_flag=True),
            L,
            batching=Batching(batch_size=64, chunk_length=chunk_length),
        )
        assert loader.num_features == 1 and loader.cross_width == N * F + N
        for batch in loader:
            x, cross, index = batch["x"].numpy(), batch["cross"].numpy(), batch["cross_index"]
            assert len(cross) == len(np.unique(batch["t"][batch["t"] >= 0]).tolist()) or (
                chunk_length is None
            )  # one row per distinct date of the batch, never one per step
            for b in range(len(x)):
                if chunk_length is None:
                    t, n = int(batch["t"][b]), int(batch["n"][b])
                    steps = list(range(t - L + 1, t + 1))
                else:
                    real = batch["t"][b] >= 0
                    steps, n = batch["t"][b][real].tolist(), int(batch["n"][b])
                    assert (index[b][~real] == -1).all()  # padding reads no date
                rows = cross[index[b][: len(steps)].numpy()]  # (S, N * F + N)
                want_all = np.stack([np.where(valid[s][:, None], inputs[s], 0.0) for s in steps])
                np.testing.assert_array_equal(rows[:, : N * F], want_all.reshape(-1, N * F))
                np.testing.assert_array_equal(rows[:, N * F :], valid[steps])
                np.testing.assert_array_equal(x[b, : len(steps), -1], context[steps, n, 0])


def test_lookback_longer_than_panel_gives_no_windows(tiny):
    inputs, valid, labels = tiny
    loader = WindowLoader(WindowSource(inputs, valid, labels), T + 1)
    assert loader.num_windows == 0 and len(loader) == 0 and list(loader) == []
