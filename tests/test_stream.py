"""One step at a time (``relcast update``'s daily path for the TFT): the forecasts of the chunk
pass, and a state that lets the next day run one step per tile, across tile boundaries,
suspensions and late listings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relcast.models.temporal.registry import create_model
from relcast.training.stage3 import predict_stage3
from relcast.training.stage3_inputs import Stage3Inputs
from relcast.training.stream import StreamState, can_stream, run_starts, stream_forecast

T, N, F_IN, H, L, CHUNK = 150, 5, 4, 2, 9, 20  # tiles of 20 steps, 12 scored


def inputs_with_gaps(seed: int = 0) -> Stage3Inputs:
    g = np.random.default_rng(seed)
    x = g.normal(size=(T, N, F_IN)).astype(np.float32)
    valid = np.ones((T, N), dtype=bool)
    valid[70:73, 1] = False  # a suspension
    valid[:55, 2] = False  # a late listing
    valid[120, 3] = False  # one missing day
    x[~valid] = 0.0
    return Stage3Inputs(
        feature_set="own", dates=np.arange(T), symbols=np.array([f"S{i}" for i in range(N)]),
        values=x, valid=valid, names=[f"f{i}" for i in range(F_IN)],
        groups={"own": [f"f{i}" for i in range(F_IN)]},
        sector_ids=np.array([0, 1, 0, 1, 1], dtype=np.int64),
    )  # fmt: skip


def tft(lstm_layers: int = 1):
    torch.manual_seed(0)
    return create_model(
        "tft", num_features=F_IN, horizons=H, quantiles=(0.1, 0.5, 0.9), num_stocks=N,
        num_sectors=2, hidden_size=16, num_heads=4, variable_hidden_size=4, dropout=0.0,
        lookback=L, lstm_layers=lstm_layers,
    ).eval()  # fmt: skip


def test_run_starts():
    valid = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=bool)
    assert run_starts(valid, 3).tolist() == [3, 1, 2]
    assert run_starts(valid, 1).tolist() == [0, 1, -1]


@pytest.mark.parametrize("lstm_layers", [1, 2])
def test_cold_stream_equals_the_chunk_pass(lstm_layers):
    inputs, model = inputs_with_gaps(), tft(lstm_layers)
    assert can_stream(model, inputs)
    index = np.arange(40, T)
    ref = predict_stage3(model, inputs, index, chunk_length=CHUNK)["pred"]
    got, _ = stream_forecast(model, inputs, index, chunk_length=CHUNK)
    assert np.isfinite(ref[index]).mean() > 0.8  # most stocks have a window on most dates
    np.testing.assert_array_equal(np.isnan(got["pred"]), np.isnan(ref))
    np.testing.assert_allclose(got["pred"], ref, atol=1e-5)


def test_daily_updates_run_one_step_each_and_equal_the_chunk_pass(monkeypatch):
    """A chain of one-date updates, each from the state of the day before: every forecast is
    the chunk pass's, and every day after the first runs exactly one date of steps, also on
    the days a stock enters a new tile, comes back from a suspension or is listed."""
    inputs, model = inputs_with_gaps(1), tft()
    first, last = 45, T - 1
    ref = predict_stage3(model, inputs, np.arange(first, last + 1), chunk_length=CHUNK)["pred"]
    steps = []
    step = model.stream_step

    def counted(x, state):
        steps[-1] += 1
        return step(x, state)

    monkeypatch.setattr(model, "stream_step", counted)
    state = None
    for t in range(first, last + 1):
        steps.append(0)
        got, state = stream_forecast(model, inputs, np.array([t]), chunk_length=CHUNK, state=state)
        np.testing.assert_array_equal(np.isnan(got["pred"][t]), np.isnan(ref[t]))
        np.testing.assert_allclose(got["pred"][t], ref[t], atol=1e-5)
        assert np.isnan(np.delete(got["pred"], t, axis=0)).all()
        # the state holds, per stock valid on t, its tile for t + 1 (and the next if begun)
        assert set(state.n.tolist()) == set(np.flatnonzero(inputs.valid[t]).tolist())
        assert state.t == t
    assert steps[0] > L - 1  # the first day runs each tile from its start
    assert steps[1:] == [1] * (len(steps) - 1)


def test_a_state_saved_and_read_back_resumes_and_a_later_one_is_ignored():
    inputs, model = inputs_with_gaps(2), tft()
    ref = predict_stage3(model, inputs, np.arange(90, 101), chunk_length=CHUNK)["pred"]
    _, state = stream_forecast(model, inputs, np.array([95]), chunk_length=CHUNK)
    state.weights = "abc"
    back = StreamState.from_bytes(state.to_bytes())
    assert back.weights == "abc" and back.t == 95
    got, _ = stream_forecast(model, inputs, np.arange(96, 101), chunk_length=CHUNK, state=back)
    np.testing.assert_allclose(got["pred"][96:101], ref[96:101], atol=1e-5)
    # a state at or after the first date asked for is not used (it would skip steps)
    got, _ = stream_forecast(model, inputs, np.arange(90, 101), chunk_length=CHUNK, state=back)
    np.testing.assert_allclose(got["pred"][90:101], ref[90:101], atol=1e-5)


def test_a_state_with_rows_of_unequal_lengths_is_refused():
    inputs, model = inputs_with_gaps(), tft()
    _, state = stream_forecast(model, inputs, np.array([60]), chunk_length=CHUNK)
    state.start = state.start[:-1]
    with pytest.raises(ValueError, match="one row per tile"):
        StreamState.from_bytes(state.to_bytes())
