"""Regime detection (causal, recovers planted regimes) and the regime gate."""

import numpy as np
import pytest
import torch

from relcast.models.regime import (
    BEAR,
    BULL,
    SIDEWAYS,
    RegimeGate,
    detect_regime,
    gate_columns,
    regime_features,
)


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
