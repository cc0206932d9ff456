"""Sequence (chunk) training and prediction of Stage3: the same scored samples as windows,
the same forecasts where the model's semantics allow it, and no look-ahead."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from relcast.models.temporal.losses import pinball_loss
from relcast.models.temporal.registry import create_model
from relcast.models.temporal.tcn import receptive_field
from relcast.training.loader import Batching, WindowLoader, WindowSource
from relcast.training.stage3 import predict_stage3
from relcast.training.stage3_inputs import Stage3Inputs

T, N, F_IN, H, L = 160, 4, 3, 2, 13


def market(seed: int = 0):
    """Inputs with gaps (a suspension, a late listing) and labels with a hole."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(T, N, F_IN)).astype(np.float32)
    valid = np.ones((T, N), dtype=bool)
    valid[70:74, 1] = False  # suspended: windows across it are not usable
    valid[:40, 2] = False  # listed late
    x[~valid] = np.nan
    labels = g.normal(size=(T, N, H)).astype(np.float32)
    labels[100:130, 3] = np.nan  # a long run without labels
    return x, valid, labels


def scored_cells(loader: WindowLoader) -> list[tuple[int, int]]:
    cells = []
    for batch in loader:
        t = batch["t"][batch["origin"]]
        n = batch["n"][:, None].expand_as(batch["origin"])[batch["origin"]]
        cells += list(zip(t.tolist(), n.tolist(), strict=True))
    return cells


def test_chunks_score_every_window_end_once_with_its_whole_window():
    x, valid, labels = market()
    index = np.arange(20, 150)
    chunks = WindowLoader(
        WindowSource(x, valid, labels),
        L,
        index=index,
        batching=Batching(batch_size=40, chunk_length=30),
    )
    windows = WindowLoader(
        WindowSource(x, valid, labels), L, index=index, batching=Batching(batch_size=1000)
    )
    assert chunks.chunk_length == 30 and chunks.num_windows == windows.num_windows
    cells = scored_cells(chunks)
    assert len(cells) == len(set(cells)) == windows.num_windows  # each end scored once
    assert set(cells) == set(zip(windows.t_idx.tolist(), windows.n_idx.tolist(), strict=True))
    for batch in chunks:
        real = batch["t"] >= 0
        steps, n = batch["t"].clamp(min=0), batch["n"][:, None].expand_as(real)
        assert valid[steps[real], n[real]].all()  # a chunk never holds a masked date
        assert (batch["x"][~real] == 0).all()  # right padding is zeros
        assert not batch["origin"][:, : L - 1].any()  # the burn-in is never scored
        for i, c in torch.nonzero(batch["origin"]).tolist():
            t, s = int(batch["t"][i, c]), int(batch["n"][i])
            # the scored step's window of L steps lies inside the chunk, unchanged
            assert torch.equal(
                batch["x"][i, c - L + 1 : c + 1], torch.from_numpy(x[t - L + 1 : t + 1, s])
            )
            assert torch.equal(batch["y"][i, c], torch.from_numpy(labels[t, s]))
        assert torch.isnan(batch["y"][~batch["origin"]]).all()


def test_chunk_order_is_seeded_and_ddp_shards_are_even():
    x, valid, labels = market()

    def make(**kw):
        return WindowLoader(
            WindowSource(x, valid, labels),
            L,
            batching=Batching(batch_size=30, chunk_length=26, shuffle=True, seed=5, **kw),
        )

    first = [b["n"].tolist() + b["t"][:, 0].tolist() for b in make()]
    again = [b["n"].tolist() + b["t"][:, 0].tolist() for b in make()]
    assert first == again
    one = make()
    epochs = [[b["t"][:, 0].tolist() for b in one] for _ in range(2)]
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    ranks = [make(rank=r, world_size=3) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1  # equal batch counts: no DDP deadlock
    cells = [c for r in ranks for c in scored_cells(r)]
    assert len(cells) == len(set(cells)) == make().num_windows


def tiny(name: str, lookback: int = L, **kw):
    torch.manual_seed(0)
    return create_model(
        name, num_features=F_IN, horizons=H, quantiles=(0.1, 0.5, 0.9), num_stocks=N,
        num_sectors=1, hidden_size=8, dropout=0.0, lookback=lookback, **kw,
    ).double().eval()  # fmt: skip


def as_double(batch):
    return {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}


def window_preds(model, x, valid, t, n):
    """The windowed model's forecasts for the window ends ``(t, n)``."""
    loader = WindowLoader(
        WindowSource(x, valid), L, require_labels=False, batching=Batching(batch_size=10_000)
    )
    batch = loader.gather(torch.as_tensor(t), torch.as_tensor(n))
    with torch.no_grad():
        return model(as_double(batch))["pred"]  # (M, H, Q)


def chunk_preds(model, loader):
    preds, ts, ns, firsts = [], [], [], []
    with torch.no_grad():
        for batch in loader:
            o = batch["origin"]
            pred = model(as_double(batch))["pred"]  # (B, C, H, Q)
            assert pred.shape[:2] == o.shape
            preds.append(pred[o])
            ts.append(batch["t"][o])
            ns.append(batch["n"][:, None].expand_as(o)[o])
            first = torch.zeros_like(o)
            first[:, L - 1] = True  # the first scored step: its window is the chunk's start
            firsts.append(first[o])
    return torch.cat(preds), torch.cat(ts), torch.cat(ns), torch.cat(firsts)


def test_tcn_chunk_outputs_equal_windowed_outputs_when_receptive_field_is_the_lookback():
    x, valid, labels = market()
    model = tiny("tcn", kernel_size=3, num_levels=2)
    assert model.config.receptive_field == receptive_field(3, 2) == L
    loader = WindowLoader(
        WindowSource(np.nan_to_num(x), valid, labels),
        L,
        batching=Batching(batch_size=64, chunk_length=32),
    )
    pred, t, n, _ = chunk_preds(model, loader)
    ref = window_preds(model, np.nan_to_num(x), valid, t, n)
    torch.testing.assert_close(pred, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["gru", "lstm", "tft"])
def test_first_scored_step_of_a_chunk_is_the_windowed_forecast(name):
    # later steps differ by design: the recurrent state has run from the chunk start
    x, valid, labels = market(1)
    model = tiny(name, **({"num_heads": 2} if name == "tft" else {}))
    loader = WindowLoader(
        WindowSource(np.nan_to_num(x), valid, labels),
        L,
        batching=Batching(batch_size=64, chunk_length=40),
    )
    pred, t, n, first = chunk_preds(model, loader)
    assert first.sum() >= 10
    ref = window_preds(model, np.nan_to_num(x), valid, t[first], n[first])
    torch.testing.assert_close(pred[first], ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["gru", "lstm", "tcn", "tft"])
def test_chunk_forecasts_are_causal(name):
    model = tiny(name, **({"num_heads": 2} if name == "tft" else {}))
    g = torch.Generator().manual_seed(3)
    C = 50
    batch = {
        "x": torch.randn(3, C, F_IN, generator=g, dtype=torch.float64),
        "origin": torch.ones(3, C, dtype=torch.bool),
        "stock_id": torch.tensor([0, 1, 2]),
        "sector_id": torch.zeros(3, dtype=torch.long),
    }
    with torch.no_grad():
        base = model(batch)["pred"]  # (B, C, H, Q)
        for s in (10, 30, 49):
            moved = dict(batch, x=batch["x"].clone())
            moved["x"][:, s] += 5.0
            out = model(moved)["pred"]
            torch.testing.assert_close(out[:, :s], base[:, :s], rtol=0, atol=0)
            assert not torch.allclose(out[:, s], base[:, s])


def test_banded_attention_equals_windowed_causal_attention():
    from relcast.models.temporal.tft_parts import InterpretableMultiHeadAttention

    torch.manual_seed(0)
    attention = InterpretableMultiHeadAttention(8, 2).double().eval()
    h = torch.randn(2, 40, 8, dtype=torch.float64)
    with torch.no_grad():
        out, attn = attention(h, causal=True, band=L)  # (B, C, d), (B, heads, C, C)
        for p in range(L - 1, 40):
            win_out, win_attn = attention(h[:, p - L + 1 : p + 1], causal=True)
            torch.testing.assert_close(out[:, p], win_out[:, -1], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(attn[:, :, p, p - L + 1 : p + 1], win_attn[:, :, -1])
    assert (attn[:, :, L:, :1] == 0).all()  # nothing outside the band of L steps


def test_tft_interpretation_on_chunks_matches_windows_where_the_state_does():
    x, valid, labels = market(2)
    model = tiny("tft", num_heads=2).float()
    x = np.nan_to_num(x)
    # stocks valid from date 0, tiles of 2L steps: the ends L - 1 + k (L + 1) are the first
    # scored step of their tile, so their LSTM state starts where their window does
    ends, stocks = np.array([L - 1 + 3 * (L + 1), L - 1 + 6 * (L + 1)]), [0, 3]
    chunks = WindowLoader(
        WindowSource(x, valid, labels),
        L,
        index=ends,
        stocks=stocks,
        batching=Batching(batch_size=1, chunk_length=2 * L),
    )
    assert (chunks.chunk_len == L).all()  # each chunk is exactly its end's window
    seq = model.interpret(iter(chunks))
    windows = WindowLoader(
        WindowSource(x, valid, labels),
        L,
        index=ends,
        stocks=stocks,
        batching=Batching(batch_size=1000),
    )
    ref = model.interpret(iter(windows))
    assert seq["attention"].shape == ref["attention"].shape == (L,)
    np.testing.assert_allclose(seq["attention"], ref["attention"], atol=1e-5)
    for k, v in ref["variable_importance"].items():
        assert seq["variable_importance"][k] == pytest.approx(v, abs=1e-5)
    assert sorted(seq["per_stock"].index) == sorted(ref["per_stock"].index)


def test_regime_gated_model_takes_sequence_batches():
    from relcast.features.regime_detection import REGIME_COLUMNS
    from relcast.models.regime_gate import RegimeGatedModel

    names = ["f0", "attention_to_index", "attention_to_sector", *REGIME_COLUMNS]
    model = create_model("gru", num_features=len(names), horizons=H, hidden_size=8, lookback=L)
    gated = RegimeGatedModel.wrap(model, names)
    x = torch.randn(2, 30, len(names))
    zeros = torch.zeros(2, dtype=torch.long)
    origin = torch.ones(2, 30, dtype=torch.bool)
    out = gated({"x": x, "origin": origin, "stock_id": zeros, "sector_id": zeros})
    assert out["pred"].shape == (2, 30, H, 3)


def test_predict_on_chunks_equals_windows_for_a_tcn_and_a_date_alone_as_in_its_span():
    x, valid, labels = market(4)
    inputs = Stage3Inputs(
        feature_set="own", dates=np.arange(T), symbols=np.array([f"S{i}" for i in range(N)]),
        values=np.nan_to_num(x), valid=valid, names=[f"f{i}" for i in range(F_IN)],
        groups={"own": [f"f{i}" for i in range(F_IN)]}, sector_ids=np.zeros(N, dtype=np.int64),
    )  # fmt: skip
    tcn = tiny("tcn", kernel_size=3, num_levels=2).float()
    seq = predict_stage3(tcn, inputs, np.arange(30, T), chunk_length=40)["pred"]
    win = predict_stage3(tcn, inputs, np.arange(30, T), chunk_length=None)["pred"]
    assert np.isfinite(seq).any()
    np.testing.assert_array_equal(np.isnan(seq), np.isnan(win))
    np.testing.assert_allclose(seq, win, atol=1e-5)
    gru = tiny("gru").float()
    span = predict_stage3(gru, inputs, np.arange(30, T))["pred"]
    for t in (T - 1, 100, 57):
        # a date predicted alone (an update) gets the forecast it gets inside its span:
        # the chunk tiling is fixed by the data, not by the dates asked for
        one = predict_stage3(gru, inputs, np.array([t]))["pred"]
        assert np.isfinite(one[t]).any() and np.isnan(np.delete(one, t, axis=0)).all()
        np.testing.assert_allclose(one[t], span[t], atol=1e-6)


def test_sequence_loss_is_the_windowed_loss_over_the_same_samples():
    x, valid, labels = market(5)
    x = np.nan_to_num(x)
    model = tiny("tcn", kernel_size=3, num_levels=2)
    q = model.config.quantiles
    chunks = WindowLoader(
        WindowSource(x, valid, labels), L, batching=Batching(batch_size=10_000, chunk_length=60)
    )
    windows = WindowLoader(WindowSource(x, valid, labels), L, batching=Batching(batch_size=10_000))
    (cb,), (wb,) = list(chunks), list(windows)
    with torch.no_grad():
        seq = pinball_loss(model(as_double(cb))["pred"], cb["y"].double(), q, cb["origin"])
        win = pinball_loss(model(as_double(wb))["pred"], wb["y"].double(), q)
    torch.testing.assert_close(seq, win, rtol=1e-10, atol=0)
    assert int(cb["origin"].sum()) == windows.num_windows


def test_fit_stage3_trains_on_chunks_by_default(tmp_path):
    from dataclasses import replace

    from relcast.training.specs import Stage3Spec, TrainerSpec
    from relcast.training.stage3 import fit_stage3

    x, valid, labels = market(6)
    inputs = Stage3Inputs(
        feature_set="own", dates=np.arange(T), symbols=np.array([f"S{i}" for i in range(N)]),
        values=np.nan_to_num(x), valid=valid, names=[f"f{i}" for i in range(F_IN)],
        groups={"own": [f"f{i}" for i in range(F_IN)]}, sector_ids=np.zeros(N, dtype=np.int64),
    )  # fmt: skip
    split = SimpleNamespace(train=np.arange(0, 110), valid=np.arange(115, T))
    spec = Stage3Spec(lookback=L, hparams={"hidden_size": 8}, max_epochs=1, batch_size=64)
    trainer = TrainerSpec(out_dir=tmp_path, progress=False)
    seq = fit_stage3("gru", inputs, labels, split, spec, trainer)
    win = fit_stage3("gru", inputs, labels, split, replace(spec, chunk_length=None), trainer)
    assert seq.chunk_length == 128 and win.chunk_length is None
    assert seq.num_train_windows == win.num_train_windows
    assert np.isfinite(seq.history[-1]["val_loss"]) and np.isfinite(seq.history[-1]["val_rank_ic"])


def test_evaluation_batches_are_bounded_by_input_size():
    from relcast.training.stage3 import EVAL_BATCH_FLOATS, eval_batch_size

    assert eval_batch_size(4096, 50, 60, 128) == 4096  # a hybrid input: the asked size
    wide = eval_batch_size(4096, 1026 * 30, 60, 128)  # rawconcat of 1,026 stocks
    assert 1 <= wide < 4096 and wide * 1026 * 30 * 128 / 69 <= EVAL_BATCH_FLOATS
    assert eval_batch_size(4096, 1026 * 30, 60, None) * 1026 * 30 * 60 <= EVAL_BATCH_FLOATS


def test_rawconcat_block_is_shared_by_loaders_not_copied():
    x, valid, labels = market(7)
    own = np.nan_to_num(x)
    own[~valid] = 0.0  # as assemble_inputs leaves it
    train = WindowLoader(
        WindowSource(own, valid, labels, concat_inputs=own), L, batching=Batching(chunk_length=30)
    )
    check = WindowLoader(WindowSource(own, valid, labels, concat_inputs=own), L)
    assert train.concat.data_ptr() == check.concat.data_ptr() == own.ctypes.data
    batch = next(iter(train))
    assert batch["x"].shape[-1] == F_IN and batch["cross"].shape[-1] == N * F_IN  # per date
    dirty = WindowLoader(WindowSource(x, valid, labels, concat_inputs=x), L)  # NaN at masked cells
    assert dirty.concat.data_ptr() != x.ctypes.data and torch.isfinite(dirty.concat).all()
    assert (dirty.concat[torch.from_numpy(~valid)] == 0).all()


def test_cpu_gru_recurrence_equals_nn_gru_in_values_and_gradients():
    from relcast.models.temporal.gru_cpu import GRURecurrence, gru_forward

    torch.manual_seed(0)
    rnn = torch.nn.GRU(5, 8, num_layers=2, batch_first=True).double()
    x = torch.randn(3, 17, 5, dtype=torch.float64, requires_grad=True)
    ref, out = rnn(x)[0], gru_forward(rnn, x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [x, *rnn.parameters()], grad)
    got = torch.autograd.grad(out, [x, *rnn.parameters()], grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    gi = torch.randn(6, 2, 12, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    b_hh = torch.randn(12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(GRURecurrence.apply, (gi, w_hh, b_hh))


def test_gru_model_gives_the_same_forecasts_and_gradients_on_either_recurrence(monkeypatch):
    from relcast.models.temporal import lstm

    model = tiny("gru").train()  # dropout 0: training mode, deterministic
    g = torch.Generator().manual_seed(1)
    batch = {
        "x": torch.randn(4, 30, F_IN, generator=g, dtype=torch.float64),
        "origin": torch.ones(4, 30, dtype=torch.bool),
        "stock_id": torch.tensor([0, 1, 2, 3]),
        "sector_id": torch.zeros(4, dtype=torch.long),
    }
    results = []
    for small in (lstm.SMALL_BATCH, 0):  # the CPU fast path, then nn.GRU itself
        monkeypatch.setattr(lstm, "SMALL_BATCH", small)
        model.zero_grad()
        pred = model(batch)["pred"]
        pred.square().mean().backward()
        results.append((pred.detach(), [p.grad.clone() for p in model.parameters()]))
    (fast, fast_grads), (ref, ref_grads) = results
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
