"""Generic tests run over every registered Stage3 model, plus the registry and the losses.

Adding a model to the registry adds one entry to ``TINY_PARAMS``, not a new test file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from relcast.models.temporal.losses import QuantileHead, pinball_loss, point_forecast
from relcast.models.temporal.registry import (
    TemporalConfig,
    available_models,
    create_model,
    is_cross_section_model,
    register_model,
)

F_IN, L, H, N_STOCKS, N_SECTORS = 5, 12, 3, 4, 2
COMMON = dict(
    num_features=F_IN,
    horizons=H,
    lookback=L,
    num_stocks=N_STOCKS,
    num_sectors=N_SECTORS,
    hidden_size=16,
    dropout=0.0,
)
# Model-specific tiny settings; every registered model must have an entry.
TINY_PARAMS: dict[str, dict] = {
    "tft": dict(num_heads=2, variable_hidden_size=4),
    "lstm": dict(num_layers=1),
    "gru": dict(num_layers=1),
    "tcn": dict(kernel_size=2),
}
# the whole-date (relational) models take cross-section batches: tests/test_relational_models.py
MODELS = [m for m in available_models() if not is_cross_section_model(m)]


def make_model(name: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, **{**COMMON, **TINY_PARAMS[name], **overrides})


def make_batch(batch_size: int = 16, seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": scale * torch.randn(batch_size, L, F_IN, generator=g),
        "stock_id": torch.randint(0, N_STOCKS, (batch_size,), generator=g),
        "sector_id": torch.randint(0, N_SECTORS, (batch_size,), generator=g),
    }


def planted_target(x: torch.Tensor) -> torch.Tensor:
    """y_h = x_0 at the origin minus half of x_1 lagged h+1 steps: [B, H]."""
    return torch.stack([x[:, -1, 0] - 0.5 * x[:, -(h + 2), 1] for h in range(H)], dim=1)


def test_every_registered_model_has_tiny_params():
    assert {"tft", "lstm", "gru", "tcn"} <= set(MODELS)
    assert set(MODELS) <= set(TINY_PARAMS), "add the new model's tiny params to TINY_PARAMS"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("quantiles", [(0.1, 0.5, 0.9), None])
def test_output_shapes_and_finite(name, quantiles):
    model = make_model(name, quantiles=quantiles).eval()
    out = model(make_batch(batch_size=6))
    Q = 1 if quantiles is None else len(quantiles)
    assert out["pred"].shape == (6, H, Q)
    assert out["pred_all"].shape == (6, L, H, Q)
    assert torch.equal(out["pred"], out["pred_all"][:, -1])
    for key, value in out.items():
        assert torch.isfinite(value).all(), f"{name}: {key} has NaN/inf"
    assert point_forecast(out["pred"], quantiles).shape == (6, H)


@pytest.mark.parametrize("name", MODELS)
def test_sequence_batch_forecasts_every_step_and_learns_from_origins_only(name):
    model = make_model(name)
    C = 3 * L
    g = torch.Generator().manual_seed(1)
    origin = torch.zeros(4, C, dtype=torch.bool)
    origin[:, L - 1 :: 5] = True
    batch = {
        **make_batch(batch_size=4),
        "x": torch.randn(4, C, F_IN, generator=g),
        "origin": origin,
    }
    out = model(batch)
    assert out["pred"].shape == (4, C, H, 3)  # a forecast at every step of the chunk
    y = torch.randn(4, C, H, generator=g)
    y[~origin] = float("nan")  # as the loader gives them
    loss = pinball_loss(out["pred"], y, (0.1, 0.5, 0.9), origin)
    assert torch.isfinite(loss)
    loss.backward()
    # steps after the last origin cannot change the loss (causal): no gradient reaches them
    x = batch["x"].clone().requires_grad_(True)
    pinball_loss(model({**batch, "x": x})["pred"], y, (0.1, 0.5, 0.9), origin).backward()
    last = int(torch.nonzero(origin[0]).max())
    assert x.grad[:, last + 1 :].abs().max() == 0
    assert x.grad[:, : last + 1].abs().max() > 0


@pytest.mark.parametrize("name", MODELS)
def test_gradient_reaches_every_parameter(name):
    model = make_model(name).train()
    batch = make_batch(batch_size=32)
    out = model(batch)
    loss = pinball_loss(out["pred"], planted_target(batch["x"]), model.config.quantiles)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize("name", MODELS)
def test_loss_falls_on_planted_signal(name):
    model = make_model(name).train()
    batch = make_batch(batch_size=128, seed=1)
    y = planted_target(batch["x"])
    quantiles = model.config.quantiles
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        start = pinball_loss(model(batch)["pred"], y, quantiles).item()
    for _ in range(50):
        opt.zero_grad()
        loss = pinball_loss(model(batch)["pred"], y, quantiles)
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = pinball_loss(model(batch)["pred"], y, quantiles).item()
    assert end < 0.6 * start, f"{name}: loss {start:.3f} -> {end:.3f}"


@pytest.mark.parametrize("name", MODELS)
def test_pred_all_is_causal(name):
    model = make_model(name).eval()
    batch = make_batch(batch_size=8, seed=2)
    with torch.no_grad():
        base = model(batch)["pred_all"]
        for t in (0, 3, L // 2, L - 2):
            perturbed = dict(batch, x=batch["x"].clone())
            perturbed["x"][:, t + 1 :] += 3.0 * torch.randn_like(perturbed["x"][:, t + 1 :])
            moved = model(perturbed)["pred_all"]
            torch.testing.assert_close(moved[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
            # the perturbation is visible later, so the check above can fail
            assert (moved[:, t + 1 :] - base[:, t + 1 :]).abs().max() > 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_quantiles_are_ordered(name):
    model = make_model(name, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95)).eval()
    with torch.no_grad():
        pred_all = model(make_batch(batch_size=32, seed=3, scale=10.0))["pred_all"]
    # never crossing (ties only where a softplus offset underflows in float32)
    assert (pred_all.diff(dim=-1) >= 0).all()
    assert (pred_all.diff(dim=-1) > 0).float().mean() > 0.9


# ---------------------------------------------------------------- registry


def test_create_model_rejects_unknown_and_missing_keys():
    with pytest.raises(TypeError, match=r"unknown config keys.*'hiden_size'.*allowed keys.*hidden"):
        create_model("tft", num_features=3, hiden_size=8)
    with pytest.raises(TypeError, match="num_features"):
        create_model("lstm", hidden_size=8)
    with pytest.raises(KeyError, match="available"):
        create_model("no-such-model", num_features=3)


def test_config_validation():
    with pytest.raises(ValueError, match="increasing"):
        create_model("tft", num_features=3, quantiles=(0.5, 0.1))
    with pytest.raises(ValueError, match="feature_names"):
        create_model("gru", num_features=3, feature_names=("a", "b"))
    model = create_model("gru", num_features=2, quantiles=[0.2, 0.8], feature_names=["a", "b"])
    assert model.config.quantiles == (0.2, 0.8)  # YAML lists become tuples


def test_register_model_enforces_the_config_contract():
    with pytest.raises(TypeError, match="dataclass"):

        @register_model("bad-no-config")
        class NoConfig(nn.Module):
            pass

    @dataclass
    class Partial:
        num_features: int
        hidden_size: int = 8

    with pytest.raises(TypeError, match="lacks fields"):

        @register_model("bad-partial")
        class PartialModel(nn.Module):
            Config = Partial

    assert "bad-no-config" not in available_models()
    assert issubclass(create_model("tcn", num_features=2, lookback=8).Config, TemporalConfig)


# ---------------------------------------------------------------- losses


def test_pinball_loss_matches_reference_and_ignores_nan_and_masked():
    rng = np.random.default_rng(0)
    quantiles = (0.1, 0.5, 0.9)
    pred = rng.normal(size=(7, 2, 3))
    y = rng.normal(size=(7, 2))
    y[0, 1] = np.nan
    mask = np.ones(7, dtype=bool)
    mask[3] = False
    total, count = 0.0, 0
    for i in range(7):
        for h in range(2):
            if not mask[i] or np.isnan(y[i, h]):
                continue
            for k, q in enumerate(quantiles):
                e = y[i, h] - pred[i, h, k]
                total += max(q * e, (q - 1) * e) / len(quantiles)
            count += 1
    got = pinball_loss(torch.tensor(pred), torch.tensor(y), quantiles, torch.tensor(mask))
    assert got.item() == pytest.approx(total / count, rel=1e-10)
    # point mode is the squared error of the single forecast
    point = pinball_loss(torch.tensor(pred[..., :1]), torch.tensor(y), None)
    valid = ~np.isnan(y)
    assert point.item() == pytest.approx(np.mean((pred[..., 0] - y)[valid] ** 2))
    # nothing valid: zero, not NaN
    empty = pinball_loss(torch.tensor(pred), torch.full((7, 2), np.nan), quantiles)
    assert empty.item() == 0.0


def test_pinball_minimiser_is_the_quantile():
    # fitting a constant per quantile by gradient descent recovers the sample quantiles
    y = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0))
    quantiles = (0.1, 0.5, 0.9)
    head = QuantileHead(1, 1, quantiles)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    ones = torch.ones(4000, 1)
    for _ in range(300):
        opt.zero_grad()
        pinball_loss(head(ones), y, quantiles).backward()
        opt.step()
    fitted = head(ones[:1])[0, 0].detach()
    expected = torch.quantile(y[:, 0], torch.tensor(quantiles))
    torch.testing.assert_close(fitted, expected, atol=0.06, rtol=0)


def test_point_forecast_takes_the_median():
    pred = torch.arange(2 * 3 * 5, dtype=torch.float32).view(2, 3, 5)
    assert torch.equal(point_forecast(pred, (0.05, 0.25, 0.5, 0.75, 0.95)), pred[..., 2])
    assert torch.equal(point_forecast(pred[..., :1], None), pred[..., 0])
