"""Regime detection (causal, recovers planted regimes) and the regime gate."""

import numpy as np
import pytest
import torch

from relcast.features.regime_detection import BEAR, BULL, SIDEWAYS, detect_regime, regime_features
from relcast.models.regime_gate import RegimeGate, gate_columns


def _planted_index(seed=0, T=900, seg=150):
    """Index path with planted segments: +drift (bull), -drift (bear), 0 drift (sideways)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, size=T // seg).repeat(seg)
    drift = np.array([0.002, -0.002, 0.0])[truth]
    close = 100 * np.exp(np.cumsum(drift + 0.008 * rng.standard_normal(T)))
    return close, truth


def test_regime_is_causal():
    close, _ = _planted_index()
    base = detect_regime(close, window=40)
    rng = np.random.default_rng(1)
    for t in (50, 300, 600):
        changed = close.copy()
        changed[t + 1 :] *= np.exp(np.cumsum(0.05 * rng.standard_normal(len(close) - t - 1)))
        changed[t + 5] = np.nan  # a closed day after t changes nothing either
        np.testing.assert_array_equal(detect_regime(changed, window=40)[: t + 1], base[: t + 1])


def test_regime_recovers_planted_drift():
    close, truth = _planted_index()
    regime = detect_regime(close, window=40)
    assert set(np.unique(regime)) <= {BULL, BEAR, SIDEWAYS}
    # chance agreement of the detector with truth, given both marginals
    chance = sum(np.mean(regime == k) * np.mean(truth == k) for k in range(3))
    agree = np.mean(regime[40:] == truth[40:])
    assert agree > chance + 0.15
    # a steady uptrend is bull, a steady downtrend bear, after warm-up
    up = 100 * np.exp(np.linspace(0, 1, 200))
    assert (detect_regime(up, window=20)[25:] == BULL).all()
    assert (detect_regime(up[::-1], window=20)[25:] == BEAR).all()
    assert (detect_regime(up, window=20)[:20] == SIDEWAYS).all()  # warm-up


def test_regime_features_one_hot():
    oh = regime_features(np.array([0, 2, 1, 2]))
    assert oh.shape == (4, 3) and oh.dtype == np.float32
    np.testing.assert_array_equal(oh.argmax(1), [0, 2, 1, 2])
    with pytest.raises(ValueError):
        regime_features(np.array([3]))


def test_gate_columns_from_names():
    names = ["attn_AAA", "attn_IDX", "attention_to_index", "attention_to_sector", "rel_emb_0"]
    idx, sec = gate_columns(names, index_symbols=["IDX"])
    assert idx == [1, 2] and sec == [3]


def test_gate_gradients_and_learned_regime_scalings():
    torch.manual_seed(0)
    B, L, K = 64, 10, 4  # columns: 0 index, 1 sector, 2-3 ungated
    gate = RegimeGate(index_columns=[0], sector_columns=[1])
    x = torch.randn(B, L, K)
    regime = torch.randint(0, 3, (B, L))
    out = gate(x, regime)
    # identity at init, ungated columns untouched
    torch.testing.assert_close(out, x)
    out.sum().backward()
    assert gate.logit.grad is not None and (gate.logit.grad.abs() > 0).all()

    # toy target: bull follows the index column, bear the sector column, sideways neither
    w_idx = torch.tensor([1.0, 0.1, 0.1])[regime]
    w_sec = torch.tensor([0.1, 1.0, 0.1])[regime]
    y = w_idx * x[..., 0] + w_sec * x[..., 1]
    gate = RegimeGate(index_columns=[0], sector_columns=[1])
    opt = torch.optim.Adam(gate.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        g = gate(x, regime)
        loss = ((g[..., 0] + g[..., 1] - y) ** 2).mean()
        loss.backward()
        opt.step()
    s = gate.scales().detach()  # (3, 2): regime x (index, sector)
    assert s[BULL, 0] > 0.8 and s[BULL, 1] < 0.3
    assert s[BEAR, 1] > 0.8 and s[BEAR, 0] < 0.3
    assert s[SIDEWAYS].max() < 0.3
    assert not torch.allclose(s[BULL], s[BEAR], atol=0.3)


def test_regime_agrees_with_synthetic_market_truth_better_than_chance():
    from relcast.data.synthetic import synthetic_market

    gains = []
    for seed in range(3):
        panel, truth = synthetic_market(num_stocks=4, num_days=800, seed=seed)
        close = panel.field("close")[:, panel.is_index][:, 0]
        regime = detect_regime(close, window=40)
        chance = sum(np.mean(regime == k) * np.mean(truth.regime == k) for k in range(3))
        gains.append(np.mean(regime[40:] == truth.regime[40:]) - chance)
    assert np.mean(gains) > 0.04


# ----------------------------------------------------------------------------- wiring


def test_build_features_adds_the_index_regime_as_one_hot_columns():
    from relcast.data.synthetic import synthetic_market
    from relcast.features.build import build_features
    from relcast.features.regime_detection import REGIME_COLUMNS

    panel, _ = synthetic_market(num_stocks=6, num_days=500, seed=2)
    plain = build_features(panel, train_end=300)
    with_regime = build_features(panel, train_end=300, regime_window=40)
    assert with_regime.groups["regime"] == list(REGIME_COLUMNS)
    # the other columns and the mask are untouched
    np.testing.assert_array_equal(with_regime.mask, plain.mask)
    np.testing.assert_array_equal(with_regime.values[:, :, : len(plain.names)], plain.values)
    onehot = with_regime.group("regime")  # (T, N, 3)
    ok = with_regime.mask
    np.testing.assert_array_equal(onehot[ok].sum(-1), 1.0)
    # every stock sees the index's regime of that date, from detect_regime on its close
    index_close = panel.field("close")[:, panel.is_index][:, 0]
    expected = detect_regime(index_close, window=40)
    t, n = np.nonzero(ok)
    np.testing.assert_array_equal(onehot[t, n].argmax(-1), expected[t])
    assert len(np.unique(expected[t])) == 3  # all three regimes occur: a real test


def _gated_gru(names, index_symbols=("IDX",)):
    from relcast.models.regime_gate import RegimeGatedModel
    from relcast.models.temporal.registry import create_model

    torch.manual_seed(0)
    inner = create_model(
        "gru", num_features=len(names), horizons=1, quantiles=None, hidden_size=8,
        lookback=6, feature_names=tuple(names),
    )  # fmt: skip
    return RegimeGatedModel.wrap(inner, names, index_symbols)


NAMES = [
    "ret1", "attn_IDX", "attn_AAA", "attention_to_index", "attention_to_sector",
    "regime_bull", "regime_bear", "regime_sideways",
]  # fmt: skip


def _batch(regime_per_step, B=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = len(regime_per_step)
    x = torch.randn(B, L, len(NAMES), generator=g)
    x[..., 5:] = torch.nn.functional.one_hot(torch.as_tensor(regime_per_step), 3).float()
    zeros = torch.zeros(B, dtype=torch.long)
    return {"x": x, "stock_id": zeros, "sector_id": zeros}


def test_gated_model_scales_every_step_by_that_steps_regime():
    model = _gated_gru(NAMES)
    assert model.spec() == {
        "regime_columns": [5, 6, 7], "index_columns": [1, 3], "sector_columns": [4],
    }  # fmt: skip
    with torch.no_grad():
        model.gate.logit.copy_(torch.tensor([[1.0, -1.0], [-30.0, 2.0], [0.5, 0.0]]))
    steps = [BULL, BEAR, BEAR, SIDEWAYS, BULL, BEAR]
    batch = _batch(steps)
    gated = model.gated(batch)["x"]
    # reference: a loop over steps with the hand-computed scales
    scales = 2 * torch.sigmoid(model.gate.logit.detach())
    want = batch["x"].clone()
    for step, r in enumerate(steps):
        want[:, step, [1, 3]] *= scales[r, 0]
        want[:, step, 4] *= scales[r, 1]
    torch.testing.assert_close(gated, want)
    # in bear steps the index columns are shut (scale ~0): changing them changes nothing,
    # changing them in a bull step does change the forecast
    model.eval()
    base = model(batch)["pred"]
    bear = {**batch, "x": batch["x"].clone()}
    bear["x"][:, [1, 2], 3] += 5.0
    torch.testing.assert_close(model(bear)["pred"], base)
    bull = {**batch, "x": batch["x"].clone()}
    bull["x"][:, 0, 3] += 5.0
    assert not torch.allclose(model(bull)["pred"], base)
    # ungated columns pass whatever the regime
    torch.testing.assert_close(gated[..., [0, 2, 5, 6, 7]], batch["x"][..., [0, 2, 5, 6, 7]])


def test_gated_model_refuses_inputs_without_regime_or_gated_columns():
    from relcast.models.regime_gate import RegimeGatedModel

    with pytest.raises(ValueError, match="regime feature columns"):
        _gated_gru([n for n in NAMES if n != "regime_bear"])
    with pytest.raises(ValueError, match="no index or sector relationship column"):
        _gated_gru(["ret1", "rel_emb_0", "regime_bull", "regime_bear", "regime_sideways"])
    inner = _gated_gru(NAMES).model
    with pytest.raises(ValueError, match="outside the model"):
        RegimeGatedModel(inner, [5, 6, 99], [1], [4])


def test_gate_learns_at_its_own_rate_without_decay():
    from relcast.training.stage3_module import Stage3Module

    model = _gated_gru(NAMES)
    opt = Stage3Module(model, quantiles=None, lr=1e-3, weight_decay=0.1).configure_optimizers()
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert len(by_id) == sum(1 for _ in model.parameters())  # every parameter, once
    gate = by_id[id(model.gate.logit)]
    assert gate["lr"] == pytest.approx(1e-3 * model.GATE_LR_FACTOR) and gate["weight_decay"] == 0
    inner = {by_id[id(p)]["lr"] for p in model.model.parameters()}
    assert inner == {1e-3}
