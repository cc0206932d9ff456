"""Temporal Fusion Transformer: planted importance is recovered, attention and interpret()."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from relcast.models.temporal.losses import pinball_loss
from relcast.models.temporal.registry import create_model
from relcast.models.temporal.tft import TemporalFusionTransformer

F_IN, L, N_STOCKS, N_SECTORS = 8, 8, 3, 2
INFORMATIVE = 2
NAMES = tuple(f"feat_{i}" for i in range(F_IN))


def make_tft(**overrides) -> TemporalFusionTransformer:
    torch.manual_seed(0)
    params = dict(
        num_features=F_IN,
        lookback=L,
        horizons=2,
        hidden_size=16,
        num_heads=2,
        variable_hidden_size=4,
        dropout=0.0,
        num_stocks=N_STOCKS,
        num_sectors=N_SECTORS,
        feature_names=NAMES,
    )
    return create_model("tft", **{**params, **overrides})


def planted_batch(n: int, g: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Targets depend on feature 2 only (its last 4 steps); the other 7 inputs are noise."""
    x = torch.randn(n, L, F_IN, generator=g)
    s = x[..., INFORMATIVE]
    y = torch.stack([s[:, -4:].sum(1), s[:, -1] - s[:, -3]], dim=1)  # (n, 2)
    batch = {
        "x": x,
        "stock_id": torch.randint(0, N_STOCKS, (n,), generator=g),
        "sector_id": torch.randint(0, N_SECTORS, (n,), generator=g),
    }
    return batch, y


@pytest.mark.parametrize("seed", [0, 1])
def test_variable_importance_finds_the_planted_input(seed):
    torch.manual_seed(seed)
    model = make_tft()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = model.interpret(planted_batch(512, g)[0])["variable_importance"]
    for _ in range(100):
        batch, y = planted_batch(128, g)
        opt.zero_grad()
        pinball_loss(model(batch)["pred"], y, model.config.quantiles).backward()
        opt.step()
    importance = model.interpret(planted_batch(512, g)[0])["variable_importance"]
    ranked = list(importance)
    assert ranked[0] == NAMES[INFORMATIVE], importance
    noise = [v for k, v in importance.items() if k != NAMES[INFORMATIVE]]
    assert importance[NAMES[INFORMATIVE]] > 2 * max(noise)
    # training moved the weight onto the informative input (it did not start there)
    assert importance[NAMES[INFORMATIVE]] > start[NAMES[INFORMATIVE]] + 0.1


def test_attention_is_causal_and_rows_sum_to_one():
    model = make_tft().eval()
    batch, _ = planted_batch(6, torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(batch)
    attn = out["attention_all"]  # (B, heads, L, L)
    assert attn.shape == (6, 2, L, L)
    future = torch.ones(L, L, dtype=torch.bool).triu(1)
    assert (attn[..., future] == 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(6, 2, L))
    assert (attn[..., ~future] > 0).all()
    torch.testing.assert_close(out["attention"], attn[:, :, -1])
    # importance outputs are distributions over the inputs / static covariates
    torch.testing.assert_close(out["variable_importance"].sum(-1), torch.ones(6))
    torch.testing.assert_close(out["static_importance"].sum(-1), torch.ones(6))
    assert out["static_importance"].shape == (6, 2)


def test_interpret_returns_named_aggregates():
    model = make_tft()
    g = torch.Generator().manual_seed(4)
    batches = [planted_batch(16, g)[0] for _ in range(3)]
    outputs = [{**b, **model(b)} for b in batches]

    result = model.interpret(batches)
    assert set(result["variable_importance"]) == set(NAMES)
    values = list(result["variable_importance"].values())
    assert values == sorted(values, reverse=True)
    assert sum(values) == pytest.approx(1.0, abs=1e-5)
    assert set(result["static_importance"]) == {"stock", "sector"}
    assert result["attention"].shape == (L,)
    assert result["attention"].sum() == pytest.approx(1.0, abs=1e-5)

    per_stock = result["per_stock"]
    assert isinstance(per_stock, pd.DataFrame)
    assert list(per_stock.columns) == list(NAMES)
    ids = torch.cat([b["stock_id"] for b in batches]).numpy()
    assert sorted(per_stock.index) == sorted(np.unique(ids))
    # per-stock rows are the means of that stock's samples
    vi = torch.cat([o["variable_importance"] for o in outputs]).detach().numpy()
    stock = int(ids[0])
    np.testing.assert_allclose(per_stock.loc[stock].to_numpy(), vi[ids == stock].mean(0), atol=1e-6)

    # precomputed outputs give the same answer without rerunning the model
    again = model.interpret(outputs)
    assert again["variable_importance"] == pytest.approx(result["variable_importance"])
    # explicit names win over the config's
    renamed = model.interpret(batches[0], feature_names=[f"f{i}" for i in range(F_IN)])
    assert set(renamed["variable_importance"]) == {f"f{i}" for i in range(F_IN)}
    with pytest.raises(ValueError, match="feature names"):
        model.interpret(batches[0], feature_names=["a"])


def test_static_covariates_change_the_forecast():
    model = make_tft().eval()
    batch, _ = planted_batch(4, torch.Generator().manual_seed(5))
    with torch.no_grad():
        base = model(batch)["pred"]
        other = model(dict(batch, stock_id=(batch["stock_id"] + 1) % N_STOCKS))["pred"]
    assert (base - other).abs().max() > 1e-5


def test_config_checks_heads_divide_hidden():
    with pytest.raises(ValueError, match="divisible"):
        make_tft(hidden_size=10, num_heads=4)
    with pytest.raises(ValueError, match=r"\[B, L, 8\]"):
        make_tft()({"x": torch.randn(2, L, 5)})


@pytest.mark.parametrize("variable_hidden_size", [4, 1])
def test_fast_variable_selection_matches_the_plain_one(variable_hidden_size):
    """forward_scalar (folded embedding, variables-first GRNs) == the readable forward."""
    model = make_tft(variable_hidden_size=variable_hidden_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, L, F_IN, generator=g)
    context = torch.randn(5, 1, 16, generator=g)
    vsn, emb = model.temporal_selection, model.input_embedding
    slow = vsn(emb(x.unsqueeze(-1)), context)
    fast = vsn.forward_scalar(x, emb, context)
    for a, b in zip(slow, fast, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    probe = torch.randn(F_IN, generator=g)
    grads = [
        torch.autograd.grad(s.square().sum() + (w * probe).sum(), params, allow_unused=True)
        for s, w in (slow, fast)
    ]
    for a, b in zip(*grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_interpret_cuts_a_large_batch_into_slices_with_the_same_result():
    model = make_tft().eval()
    batch, _ = planted_batch(100, torch.Generator().manual_seed(4))
    whole = model.interpret(batch)
    model.INTERPRET_STEPS = 3 * L  # 3 windows per forward pass: 34 slices
    sliced = model.interpret(batch)
    np.testing.assert_allclose(sliced["attention"], whole["attention"], atol=1e-6)
    for name, value in whole["variable_importance"].items():
        assert sliced["variable_importance"][name] == pytest.approx(value, abs=1e-6)
    pd.testing.assert_frame_equal(sliced["per_stock"], whole["per_stock"], atol=1e-6)
