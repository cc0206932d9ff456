"""The joint mode (stage3.models=[joint]): Stage3's loss reaches Stage1's weights, starting
from the run's trained Stage1; the newest date's relationship columns are Stage1's, live."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import TINY_RUN

from relcast.models.cross_sectional import Stage1Config
from relcast.models.temporal.registry import create_model

N, L, OWN, K = 6, 5, 4, 3


def joint(live: int = 1):
    stage1 = Stage1Config(num_features=OWN, num_stocks=N, horizons=1, d_model=8, num_heads=2,
                          num_layers=1, relationship_dim=K, dropout=0.0)  # fmt: skip
    names = tuple(f"own{i}" for i in range(OWN)) + tuple(f"rel_emb_{k}" for k in range(K))
    torch.manual_seed(0)
    return create_model(
        "joint", num_features=OWN + K, horizons=1, quantiles=None, num_stocks=N, num_sectors=2,
        hidden_size=8, dropout=0.0, lookback=L, feature_names=names, live=live,
        stage1=dataclasses.asdict(stage1), inner_hparams={"num_layers": 1},
    )  # fmt: skip


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, N, dtype=torch.bool)
    mask[1, 2] = False
    return {
        "x": torch.randn(2, N, L, OWN + K, generator=g),
        "mask": mask,
        "sector_id": torch.tensor([0, 0, 1, 1, -1, -1]),
        "sector_code": torch.tensor([0, 0, 1, 1, 0, 0]),
        "stock_id": torch.arange(N),
    }


def test_the_newest_relationship_columns_are_stage1s_and_carry_its_gradient():
    model = joint(live=1).eval()
    b = batch()
    base = model(b)["pred"]
    assert base.shape == (2, N, 1, 1)
    stored_now = {**b, "x": b["x"].clone()}
    stored_now["x"][:, :, -1, OWN:] += 5.0  # replaced by Stage1's own values: no effect
    torch.testing.assert_close(model(stored_now)["pred"], base)
    stored_before = {**b, "x": b["x"].clone()}
    stored_before["x"][:, :, -2, OWN:] += 5.0  # earlier dates are read as stored
    assert not torch.allclose(model(stored_before)["pred"], base)
    model.train()
    model(b)["pred"][b["mask"]].pow(2).mean().backward()
    grads = [p.grad for p in model.stage1.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)  # the loss reaches Stage1


def test_the_joint_model_needs_the_bottleneck_columns():
    with pytest.raises(ValueError, match="bottleneck"):
        create_model(
            "joint", num_features=OWN, horizons=1, quantiles=None, num_stocks=N, lookback=L,
            feature_names=tuple(f"own{i}" for i in range(OWN)),
            stage1=dataclasses.asdict(Stage1Config(num_features=OWN, num_stocks=N)),
        )  # fmt: skip


@pytest.mark.parametrize("lr", [1e-9, 0.01])
def test_a_run_trains_the_joint_model_from_its_stage1(tmp_path, lr):
    """With a vanishing learning rate the joint model's Stage1 stays the run's Stage1 (its
    start: a fresh one would differ by the init's scale); trained, it moves away. The joint
    row is scored like every model."""
    from safetensors.torch import load_file

    from relcast.config import load_config
    from relcast.run.runner import Pipeline

    cfg = load_config(
        overrides=[
            *TINY_RUN, "data.source=synthetic", "data.synthetic_stocks=8",
            "data.synthetic_days=260", "stage3.models=[gru,joint]", f"stage3.lr={lr}",
        ]
    )  # fmt: skip
    out = tmp_path / "run"
    Pipeline(cfg, out).run()
    metrics = json.loads((out / "metrics.json").read_text())["models"]
    assert "hybrid_joint" in metrics and "stage3_own_joint" not in metrics
    assert np.isfinite(metrics["hybrid_joint"]["rank_ic"])
    row = metrics["hybrid_joint"]  # paired with the staged hybrid and own history of its kind
    assert row["vs_staged"]["baseline"] == "hybrid_gru"
    assert row["vs_own"]["baseline"] == "stage3_own_gru" and "clark_west" in row["vs_own"]
    start = load_file(out / "stage1" / "model.safetensors")
    trained = load_file(out / "stage3" / "hybrid_joint" / "model.safetensors")
    moved = max(
        float((trained[f"stage1.{k}"].float() - v.float()).abs().max())
        for k, v in start.items()
        if v.is_floating_point()
    )
    assert (moved < 1e-5) if lr < 1e-6 else (moved > 1e-3), moved
    saved = json.loads((out / "stage3" / "hybrid_joint" / "model.json").read_text())
    assert saved["spec"]["init"].endswith("stage1/model.safetensors")
