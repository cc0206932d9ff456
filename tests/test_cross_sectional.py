"""Stage1 Transformer, untrained and tiny: set semantics, masking and the two attention paths."""

import numpy as np
import pytest
import torch

from relcast.config import load_config
from relcast.models.cross_sectional import CrossSectionalTransformer, Stage1Config

B, N, F_, H = 3, 7, 5, 2


def make_model(multitask: bool = False, seed: int = 0) -> CrossSectionalTransformer:
    torch.manual_seed(seed)
    config = Stage1Config(
        num_features=F_,
        num_stocks=N,
        num_sectors=3,
        horizons=H,
        d_model=16,
        num_heads=4,
        num_layers=2,
        relationship_dim=6,
        dropout=0.0,
        multitask=multitask,
    )
    model = CrossSectionalTransformer(config, sector_ids=torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    # Identity/sector embeddings start tiny (std 0.02); make them matter so the tests bite.
    with torch.no_grad():
        model.stock_embedding.weight.normal_()
        model.sector_embedding.weight.normal_()
    return model.eval()


def make_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, F_, generator=g)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, [1, 4]] = False
    mask[1, 6] = False
    mask[2, :] = False  # a date with no valid stock at all
    mask[2, 3] = True  # ... except one
    x[~mask] = float("nan")  # masked features may be NaN: they must never leak
    return x, mask


def test_config_from_the_preset_file_and_the_data():
    """Stage1Config.from_settings: every model field from the stage1 section (the YAML
    preset, --set), the sizes from the data; training keys stay out."""
    settings = load_config(
        "medium",
        overrides=["stage1.dim_feedforward=96", "stage1.corr_weight=0.3", "stage1.multitask=true"],
    ).stage1
    config = Stage1Config.from_settings(
        settings, num_features=3, num_stocks=4, num_sectors=2, horizons=1
    )
    assert (config.d_model, config.num_heads, config.num_layers, config.relationship_dim) == (
        128,
        8,
        3,
        32,
    )
    assert (config.dim_feedforward, config.corr_weight, config.multitask) == (96, 0.3, True)
    assert (config.num_features, config.num_stocks, config.num_sectors) == (3, 4, 2)
    default = Stage1Config.from_settings(load_config("small").stage1, num_features=3, num_stocks=4)
    assert default.dim_feedforward == 4 * 64
    with pytest.raises(ValueError, match="divisible"):
        Stage1Config(num_features=3, num_stocks=4, d_model=10, num_heads=4)


def test_output_shapes_and_no_nan():
    model = make_model(multitask=True)
    x, mask = make_batch()
    out = model(x, mask)
    assert out["embeddings"].shape == (B, N, 16)
    assert len(out["attention"]) == 2 and out["attention"][0].shape == (B, 4, N, N)
    assert out["relationship"].shape == (B, N, 6)
    assert out["market"].shape == (B, 6)
    assert out["pred"].shape == (B, N, H)
    assert out["sector_logits"].shape == (B, N, 3)
    for key in ("embeddings", "relationship", "market", "pred", "sector_logits"):
        assert torch.isfinite(out[key]).all(), key
        if key != "market":
            assert (out[key][~mask] == 0).all(), f"masked rows of {key} must be zero"
    # market = masked mean of relationship vectors over valid stocks only
    expected = (out["relationship"] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(out["market"], expected)


def test_permutation_equivariance():
    model = make_model(multitask=True)
    x, mask = make_batch()
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    out = model(x, mask)
    out_p = model(x[:, perm], mask[:, perm], stock_ids=perm)
    for key in ("embeddings", "relationship", "pred", "sector_logits"):
        torch.testing.assert_close(out_p[key], out[key][:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_p["market"], out["market"], atol=1e-5, rtol=1e-5)
    for att, att_p in zip(out["attention"], out_p["attention"], strict=True):
        torch.testing.assert_close(att_p, att[:, :, perm][:, :, :, perm], atol=1e-6, rtol=1e-5)
    # The identity embedding is what breaks symmetry: without permuting ids, outputs differ.
    out_wrong = model(x[:, perm], mask[:, perm])
    assert not torch.allclose(out_wrong["pred"], out["pred"][:, perm], atol=1e-4)


def test_attention_masking():
    model = make_model()
    x, mask = make_batch()
    for att in model(x, mask)["attention"]:  # (B, heads, N, N)
        q_valid = mask[:, None, :, None].expand_as(att)
        k_valid = mask[:, None, None, :].expand_as(att)
        # valid queries: rows sum to 1 over valid keys; masked keys get exactly 0
        row_sums = att.sum(-1)[mask[:, None].expand(-1, 4, -1)]
        torch.testing.assert_close(row_sums, torch.ones_like(row_sums))
        assert (att[q_valid & ~k_valid] == 0).all()
        # masked queries attend to nothing
        assert (att[~q_valid] == 0).all()
        # the lone valid stock of date 2 attends only to itself
        torch.testing.assert_close(att[2, :, 3, 3], torch.ones(4))


def test_masked_stocks_do_not_influence_valid_ones():
    model = make_model(multitask=True)
    x, mask = make_batch()
    out = model(x, mask)
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), F_) * 100.0  # garbage instead of NaN
    out2 = model(x2, mask)
    for key in ("embeddings", "relationship", "market", "pred"):
        torch.testing.assert_close(out2[key], out[key], atol=0.0, rtol=0.0)
    # ... while changing a valid stock does change the others (attention is live)
    x3 = x.clone()
    x3[0, 0] += 3.0
    assert not torch.allclose(model(x3, mask)["pred"][0, 2], out["pred"][0, 2])


def test_sdpa_path_equals_explicit_path():
    model = make_model(multitask=True)
    x, mask = make_batch()
    explicit = model(x, mask, need_weights=True)
    fused = model(x, mask, need_weights=False)
    assert fused["attention"] == []
    for key in ("embeddings", "relationship", "market", "pred", "sector_logits"):
        torch.testing.assert_close(fused[key], explicit[key], atol=1e-5, rtol=1e-4)


def test_gradients_finite_with_empty_date():
    model = make_model(multitask=True).train()
    x, mask = make_batch()
    mask[1] = False  # a date with nothing valid must not poison the gradients
    out = model(x, mask, need_weights=True)
    (out["pred"].sum() + out["sector_logits"].sum()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert np.isfinite(out["market"].detach().numpy()).all()


@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_dropout_is_its_own_setting(need_weights):
    """``dropout`` no longer reaches the attention weights (it sent CPU training to the
    unfused attention path, 8x slower at 1,026 stocks); ``attention_dropout`` does."""
    x = torch.randn(B, N, 16)
    valid = torch.ones(B, N, dtype=torch.bool)

    def attention_twice(**dropouts):
        config = Stage1Config(num_features=F_, num_stocks=N, d_model=16, num_heads=4, **dropouts)
        attn = CrossSectionalTransformer(config).layers[0].attn.train()
        return [attn(x, valid, need_weights)[0] for _ in range(2)]

    a, b = attention_twice(dropout=0.5)  # the default attention_dropout is 0
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    a, b = attention_twice(dropout=0.0, attention_dropout=0.5)
    assert not torch.allclose(a, b)
    # a config saved before the setting existed loads with attention dropout 0
    saved = make_model().config.to_dict()
    del saved["attention_dropout"]
    assert Stage1Config(**saved).attention_dropout == 0.0


def test_predict_with_weights_batches_within_the_memory_budget(monkeypatch):
    """With attention weights, batches shrink to ``ATTENTION_BATCH_BYTES``; outputs do not
    depend on the batching."""
    from relcast.features.featureset import FeatureSet
    from relcast.models import cross_sectional

    model = make_model()
    T = 5
    x = torch.randn(T, N, F_, generator=torch.Generator().manual_seed(3)).numpy()
    mask = np.ones((T, N), dtype=bool)
    mask[1, 2] = mask[3, :4] = False
    fs = FeatureSet(
        np.arange(T).astype("datetime64[D]"), np.array([f"S{i}" for i in range(N)]),
        [f"f{k}" for k in range(F_)], np.where(mask[..., None], x, np.nan), mask,
    )  # fmt: skip
    whole = cross_sectional.predict_stage1(model, fs, need_weights=True, average_heads=True)
    seen = []
    forward = model.forward
    monkeypatch.setattr(
        model, "forward", lambda x, *a, **k: seen.append(len(x)) or forward(x, *a, **k)
    )
    one_date = 4 * model.config.num_layers * model.config.num_heads * N * N
    monkeypatch.setattr(cross_sectional, "ATTENTION_BATCH_BYTES", 2 * one_date)
    small = cross_sectional.predict_stage1(model, fs, need_weights=True, average_heads=True)
    assert seen == [2, 2, 1]
    assert small["attention"].shape == (T, model.config.num_layers, N, N)
    for key in ("attention", "pred", "relationship"):
        np.testing.assert_allclose(small[key], whole[key], atol=1e-6)
    last = cross_sectional.predict_stage1(
        model, fs, need_weights=True, average_heads=True, last_layer=True
    )  # what evaluation saves: a layer's weights, not every layer's
    assert last["attention"].shape == (T, 1, N, N)
    np.testing.assert_allclose(last["attention"][:, 0], whole["attention"][:, -1], atol=1e-6)
    only = cross_sectional.predict_stage1(model, fs, outputs=("pred",))  # no embeddings kept
    assert "embeddings" not in only and "relationship" not in only
    np.testing.assert_allclose(only["pred"], whole["pred"], atol=1e-6)


@pytest.mark.parametrize("corr_window", [0, 6])
def test_date_batches_equal_collated_items(corr_window):
    """Stage1's batches are gathered per batch (not per date): the same tensors as
    ``default_collate`` of the dataset's items, in the same order, NaN where they are."""
    from torch.utils.data import default_collate

    from relcast.training.cross_section_data import CrossSectionDataset, DateBatches

    rng = np.random.default_rng(0)
    T = 30
    values = rng.standard_normal((T, N, F_)).astype(np.float32)
    mask = rng.random((T, N)) > 0.2
    values[~mask] = np.nan
    labels = rng.standard_normal((T, N, H)).astype(np.float32)
    labels[rng.random((T, N, H)) < 0.1] = np.nan
    target = np.arange(N) != 2
    ds = CrossSectionDataset(
        values, mask, labels, np.arange(3, 25), target=target, corr_window=corr_window
    )
    batches = list(DateBatches(ds, 4, shuffle=True, seed=1))
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1))
    assert sum(len(b["t"]) for b in batches) == len(ds)
    for k, got in enumerate(batches):
        want = default_collate([ds[int(i)] for i in order[4 * k : 4 * k + 4]])
        assert set(got) == set(want)
        for key in want:
            assert got[key].dtype == want[key].dtype
            torch.testing.assert_close(got[key], want[key], equal_nan=True, rtol=0, atol=0)
