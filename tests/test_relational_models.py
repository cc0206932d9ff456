"""The whole-date Stage3 models (StockMixer, RSR-style LSTM, MASTER) against their papers'
properties, and their data path (training/cross_section_stage3.py): masking, no look-ahead."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import cli_sets
from typer.testing import CliRunner

import relcast
from relcast.cli import app
from relcast.models.temporal.registry import create_model, is_cross_section_model
from relcast.training.cross_section_stage3 import DateBatches, cross_section_loss
from relcast.training.stage3 import predict_stage3
from relcast.training.stage3_inputs import Stage3Inputs

D, N, L, H = 2, 7, 8, 2
NAMES = ("f0", "f1", "f2", "f3", "idx_EW_ret1", "idx_EW_vol20")
F_IN = len(NAMES)
SECTORS = torch.tensor([0, 0, 1, 1, 1, -1, 2])  # -1: no industry; 2: alone in its industry
COMMON = dict(
    num_features=F_IN,
    horizons=H,
    lookback=L,
    num_stocks=N,
    num_sectors=N,
    hidden_size=8,
    dropout=0.0,
    feature_names=NAMES,
)
TINY = {
    "stockmixer": dict(market_num=3, scales=(1, 2)),
    "rsr": dict(),
    "master": dict(intra_heads=2, inter_heads=2),
}
MODELS = sorted(TINY)


def make_model(name: str, **overrides):
    torch.manual_seed(0)
    return create_model(name, **{**COMMON, **TINY[name], **overrides}).eval()


def make_batch(seed: int = 0, masked=(5,)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(D, N, L, F_IN, generator=g)
    x[..., 4:] = torch.randn(D, 1, L, 2, generator=g)  # market columns: one value per date
    mask = torch.ones(D, N, dtype=torch.bool)
    mask[:, list(masked)] = False
    return {"x": x, "mask": mask, "sector_id": SECTORS.clone(), "stock_id": torch.arange(N)}


def test_the_three_are_registered_as_whole_date_models():
    for name in MODELS:
        assert is_cross_section_model(name)
    assert not is_cross_section_model("gru")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("quantiles", [(0.1, 0.5, 0.9), None])
def test_forward_finite_and_every_parameter_learns(name, quantiles):
    model = make_model(name, quantiles=quantiles).train()
    batch = make_batch()
    pred = model(batch)["pred"]
    assert pred.shape == (D, N, H, 1 if quantiles is None else 3)
    assert torch.isfinite(pred).all()
    y = torch.randn(D, N, H)
    batch = {**batch, "y": y, "scored": batch["mask"]}
    cross_section_loss(pred, batch, quantiles, rank_weight=0.1).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not silent, f"{name}: no gradient for {silent}"


@pytest.mark.parametrize("name", MODELS)
def test_mixing_is_equivariant_to_stock_order(name):
    model = make_model(name)
    batch = make_batch()
    perm = torch.tensor([3, 6, 0, 5, 1, 4, 2])
    permuted = {
        "x": batch["x"][:, perm],
        "mask": batch["mask"][:, perm],
        "sector_id": batch["sector_id"][perm],
        "stock_id": batch["stock_id"][perm],
    }
    out, out_p = model(batch)["pred"], model(permuted)["pred"]
    keep = batch["mask"][:, perm]
    torch.testing.assert_close(out_p[keep], out[:, perm][keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_masked_stocks_do_not_affect_the_others(name):
    model = make_model(name)
    batch = make_batch(masked=(4, 6))
    out = model(batch)["pred"]
    noisy = {**batch, "x": batch["x"].clone()}
    noisy["x"][:, [4, 6]] = 1e3 * torch.randn(D, 2, L, F_IN)
    noisy["x"][0, 6, 0, 0] = float("nan")
    keep = batch["mask"]
    torch.testing.assert_close(model(noisy)["pred"][keep], out[keep])
    # the same forecasts as for a universe without them
    rest = [n for n in range(N) if n not in (4, 6)]
    smaller = {k: (v[:, rest] if k in ("x", "mask") else v[rest]) for k, v in batch.items()}
    torch.testing.assert_close(model(smaller)["pred"], out[:, rest], atol=1e-5, rtol=1e-5)
    # and an unmasked stock does move the others (the test can fail)
    moved = {**batch, "x": batch["x"].clone()}
    moved["x"][:, 0] += 3.0
    assert not torch.allclose(model(moved)["pred"][:, 1], out[:, 1])


def test_rsr_without_edges_is_its_lstm():
    model = make_model("rsr")
    batch = make_batch(masked=())
    alone = {**batch, "sector_id": torch.full((N,), -1)}  # no industry: no relation
    torch.testing.assert_close(model(alone)["pred"], model.lstm_forecast(batch))
    distinct = {**batch, "sector_id": torch.arange(N)}  # each stock alone in its industry
    torch.testing.assert_close(model(distinct)["pred"], model.lstm_forecast(batch))
    # with the industry graph, related stocks change the forecast; the unrelated do not
    related = model(batch)["pred"]
    lstm = model.lstm_forecast(batch)
    assert not torch.allclose(related[:, 0], lstm[:, 0])
    torch.testing.assert_close(related[:, [5, 6]], lstm[:, [5, 6]])


@pytest.mark.parametrize("relation", ["explicit", "implicit"])
def test_rsr_reads_only_related_stocks(relation):
    model = make_model("rsr", relation=relation)
    batch = make_batch(masked=())
    out = model(batch)["pred"]
    moved = {**batch, "x": batch["x"].clone()}
    moved["x"][:, 2] += 2.0  # industry 1: stocks 2, 3, 4
    new = model(moved)["pred"]
    assert not torch.allclose(new[:, 3], out[:, 3])
    torch.testing.assert_close(new[:, [0, 1, 5, 6]], out[:, [0, 1, 5, 6]])


def test_master_gate_is_driven_by_market_features_only():
    model = make_model("master")
    batch = make_batch()
    gate = model(batch)["gate"]
    stock = {**batch, "x": batch["x"].clone()}
    stock["x"][..., :4] = torch.randn(D, N, L, 4)
    torch.testing.assert_close(model(stock)["gate"], gate)
    assert not torch.allclose(model(stock)["pred"], model(batch)["pred"])
    market = {**batch, "x": batch["x"].clone()}
    market["x"][:, :, -1, 4:] += torch.tensor([1.5, -2.0])
    assert not torch.allclose(model(market)["gate"], gate)
    # the gate rescales the F_s stock features and keeps their total at F_s
    torch.testing.assert_close(gate.sum(-1), torch.full((D,), 4.0))


def test_master_refuses_inputs_without_market_columns():
    with pytest.raises(ValueError, match="market columns"):
        make_model("master", feature_names=tuple(f"f{k}" for k in range(F_IN)))


# --------------------------------------------------------------------------- the data path
def tiny_inputs(seed: int = 0, T: int = 30) -> Stage3Inputs:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(T, N, F_IN)).astype(np.float32)
    valid = rng.random((T, N)) > 0.1
    values[~valid] = np.nan
    return Stage3Inputs(
        feature_set="own",
        dates=np.arange(T),
        symbols=np.array([f"S{n}" for n in range(N)]),
        values=values,
        valid=valid,
        names=list(NAMES),
        groups={"own": list(NAMES[:4]), "index": list(NAMES[4:])},
        sector_ids=np.array([0, 0, 1, 1, 1, 3, 2]),
        sector_labels=("a", "b", "c", "unknown"),
    )


def test_date_batches_hold_complete_windows_and_score_only_labelled_targets():
    inputs = tiny_inputs()
    target = np.random.default_rng(1).normal(size=(30, N, H)).astype(np.float32)
    target[20, 1] = np.nan
    batches = DateBatches(inputs, L, np.arange(15, 25), target, stocks=np.arange(6))
    batch = next(iter(DateBatches(inputs, L, np.array([20]), target, stocks=np.arange(6))))
    complete = inputs.valid[20 - L + 1 : 21].all(axis=0)  # (N,)
    np.testing.assert_array_equal(batch["mask"][0].numpy(), complete)
    want = complete & (np.arange(N) < 6) & (np.arange(N) != 1)
    np.testing.assert_array_equal(batch["scored"][0].numpy(), want)
    n = int(np.flatnonzero(complete)[0])
    np.testing.assert_array_equal(batch["x"][0, n].numpy(), inputs.values[20 - L + 1 : 21, n])
    assert (batch["x"][0, ~complete] == 0).all()
    assert batch["sector_id"].tolist() == [0, 0, 1, 1, 1, -1, 2]  # "unknown": no industry
    assert batches.num_scored == int(sum(b["scored"].sum() for b in batches))


def test_a_stock_major_store_gives_the_same_batches():
    inputs = tiny_inputs()
    target = np.random.default_rng(1).normal(size=(30, N, H)).astype(np.float32)
    stored = tiny_inputs()
    stored.by_stock = np.ascontiguousarray(stored.values.transpose(1, 0, 2))  # (N, T, F)
    stored.values = np.full_like(stored.values, np.nan)  # read from by_stock only
    dates = np.arange(10, 30)
    pairs = zip(
        DateBatches(inputs, L, dates, target), DateBatches(stored, L, dates, target), strict=True
    )
    for a, b in pairs:
        for key in ("x", "mask", "scored", "t"):
            torch.testing.assert_close(a[key], b[key])


@pytest.mark.parametrize("name", MODELS)
def test_no_look_ahead_in_prediction(name):
    model = make_model(name)
    inputs = tiny_inputs()
    t = 18
    before = predict_stage3(model, inputs, np.arange(L, 30))["pred"]
    future = tiny_inputs(seed=5)
    future.values[: t + 1], future.valid[: t + 1] = inputs.values[: t + 1], inputs.valid[: t + 1]
    after = predict_stage3(model, future, np.arange(L, 30))["pred"]
    assert np.isfinite(before[: t + 1]).sum() > 20
    np.testing.assert_array_equal(before[: t + 1], after[: t + 1])
    assert not np.allclose(np.nan_to_num(before[t + 1 :]), np.nan_to_num(after[t + 1 :]))


def test_prediction_covers_every_complete_window_and_no_other():
    inputs = tiny_inputs()
    pred = predict_stage3(make_model("stockmixer"), inputs, np.arange(L, 30))["point"]
    from relcast.training.windows import window_end_mask

    ends = window_end_mask(inputs.valid, L, index=np.arange(L, 30))
    np.testing.assert_array_equal(np.isfinite(pred[..., 0]), ends)


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_pipeline_trains_and_scores_the_three(tmp_path):
    panel, _ = relcast.synthetic_market(num_stocks=8, num_days=220, seed=2)
    data = tmp_path / "bars.csv"
    panel.to_frame().to_csv(data, index=False)
    panel.meta.to_csv(tmp_path / "universe.csv", index=False)  # its sectors: the industries
    extra = [
        "stage3.models=[stockmixer,rsr,master]",
        "stage3.feature_sets=[hybrid]",
        "stage3.stockmixer.market_num=4",
        "data.industry_relative=true",
    ]
    args = ["run", "--data", str(data), "--universe", str(tmp_path / "universe.csv")]
    args += ["--out", str(tmp_path / "run"), "--seeds", "1"]
    result = CliRunner().invoke(app, [*args, *cli_sets(extra)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["models"]
    for name in ("hybrid_stockmixer", "hybrid_rsr", "hybrid_master"):
        row = metrics[name]
        assert np.isfinite(row["rank_ic"]) and row["seconds_per_epoch"] > 0, row
