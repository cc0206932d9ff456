"""Stage1 on random cross-sections (``stage1.max_stocks``): the subset is a subset of each
date's traded stocks, redrawn every epoch, read by the model through its stock identities;
prediction still reads (and forecasts) every stock, and ``max_stocks >= N`` is full attention
bit for bit."""

import numpy as np
import pytest
import torch

from relcast.config import load_config
from relcast.models.cross_sectional import CrossSectionalTransformer, Stage1Config, predict_stage1
from relcast.training.cross_section_data import (
    CrossSectionDataset,
    DateBatches,
    draw_cross_sections,
)
from relcast.training.specs import Stage1Spec, TrainerSpec
from relcast.training.stage1 import Stage1Module, fit_stage1

B, N, F_ = 4, 12, 3


def batch_with_gaps(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, N, generator=g) > 0.3  # some stocks not traded on each date
    mask[:, 0] = True  # column 0: an index, traded every date
    x = torch.randn(B, N, F_, generator=g)
    y = torch.where(mask[..., None], torch.randn(B, N, 1, generator=g), torch.nan)
    return {"x": x, "mask": mask, "y": y, "t": torch.arange(B)}


TARGET = torch.ones(N, dtype=torch.bool)
TARGET[0] = False  # the index column is not a target


def test_a_draw_is_a_subset_of_each_dates_traded_stocks():
    batch = batch_with_gaps()
    for seed in range(20):
        out = draw_cross_sections(batch, 4, TARGET, torch.Generator().manual_seed(seed))
        ids, m = out["stock_ids"], out["mask"]  # (B, K)
        for b in range(B):
            chosen = ids[b][m[b]]
            assert batch["mask"][b, chosen].all()  # masked stocks are never drawn
            assert len(set(chosen.tolist())) == len(chosen)  # without replacement
            traded_targets = int((batch["mask"][b] & TARGET).sum())
            assert int(TARGET[chosen].sum()) == min(4, traded_targets)
            assert 0 in chosen.tolist()  # the traded index column is always kept
            assert (chosen.diff() > 0).all()  # in stock order
            # every array follows the stock it names
            torch.testing.assert_close(out["x"][b][m[b]], batch["x"][b, chosen])
            torch.testing.assert_close(out["y"][b][m[b]], batch["y"][b, chosen])
        assert torch.isnan(out["y"][~m]).all()  # filler columns carry no label


def test_draws_cover_the_traded_stocks_uniformly():
    batch = batch_with_gaps()
    counts = torch.zeros(B, N)
    for seed in range(400):
        out = draw_cross_sections(batch, 3, TARGET, torch.Generator().manual_seed(seed))
        for b in range(B):
            counts[b, out["stock_ids"][b][out["mask"][b]]] += 1
    pool = batch["mask"] & TARGET
    assert (counts[~batch["mask"]] == 0).all()
    share = counts[pool] / 400  # each traded target stock: 3 / (its date's pool) of draws
    expected = (3 / pool.sum(1, keepdim=True).float()).expand(B, N)[pool]
    assert torch.allclose(share, expected, atol=0.08)


def test_a_drawn_cross_section_is_the_full_one_with_the_others_masked():
    """Equivariance kept: the model reads a drawn subset, in any column order, as the full
    cross-section with the undrawn stocks masked; outputs follow the stocks."""
    torch.manual_seed(0)
    config = Stage1Config(num_features=F_, num_stocks=N, num_sectors=2, d_model=16, num_heads=2)
    model = CrossSectionalTransformer(config, sector_ids=torch.arange(N) % 2).eval()
    with torch.no_grad():
        model.sector_embedding.weight.normal_()
    batch = batch_with_gaps()
    out = draw_cross_sections(batch, 4, TARGET, torch.Generator().manual_seed(3))
    ids, m = out["stock_ids"], out["mask"]
    with torch.no_grad():
        sub = model(out["x"], m, stock_ids=ids)["pred"]  # (B, K, 1)
        in_draw = torch.zeros(B, N, dtype=torch.bool)
        in_draw.scatter_(1, ids, m)
        full = model(batch["x"], in_draw)["pred"]  # (B, N, 1)
        torch.testing.assert_close(sub[m], full.gather(1, ids[..., None])[m], atol=1e-5, rtol=0)
        perm = torch.randperm(ids.shape[1])  # shuffle the drawn columns
        shuffled = model(out["x"][:, perm], m[:, perm], stock_ids=ids[:, perm])["pred"]
        torch.testing.assert_close(shuffled, sub[:, perm], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def market(make_market):
    m = make_market(10, 260, seed=3, horizons=1)
    config = Stage1Config(
        num_features=m.features.values.shape[2],
        num_stocks=len(m.panel.symbols),
        num_sectors=len(set(m.panel.sectors)),
        d_model=16,
        num_heads=2,
        num_layers=1,
        relationship_dim=4,
    )
    return m, config


def test_date_batches_redraw_every_epoch_reproducibly(market):
    m, _ = market
    target = ~m.panel.is_index
    data = CrossSectionDataset(m.features.values, m.features.mask, m.labels, m.split.train,
                               target=target)  # fmt: skip

    def epochs(seed: int) -> list[list[torch.Tensor]]:
        loader = DateBatches(data, 16, seed=seed, max_stocks=4, rank=0, world_size=1)
        return [[b["stock_ids"].where(b["mask"], -1) for b in loader] for _ in range(3)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    pairs = [
        (a, b) for e1, e2 in zip(first, again, strict=True) for a, b in zip(e1, e2, strict=True)
    ]
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not torch.equal(first[0][0], first[1][0])  # epoch 2 draws anew
    assert not torch.equal(first[0][0], other[0][0])  # another seed, other draws
    full = DateBatches(data, 16, max_stocks=int(target.sum()), rank=0, world_size=1)
    assert full.max_stocks is None and "stock_ids" not in next(iter(full))  # nothing to draw


def fit(market, tmp_path, max_stocks, epochs=2):
    m, config = market
    spec = Stage1Spec(max_epochs=epochs, patience=10, batch_dates=32, seed=7, max_stocks=max_stocks)
    return fit_stage1(
        m.features, m.labels, m.split, config, spec,
        TrainerSpec(out_dir=tmp_path, progress=False, accelerator="cpu"),
        target=~m.panel.is_index, sector_ids=m.panel.sectors,
    )  # fmt: skip


def test_max_stocks_at_least_n_is_full_attention_bit_for_bit(market, tmp_path):
    m, _ = market
    N_all = len(m.panel.symbols)
    full = fit(market, tmp_path / "full", None)
    same = fit(market, tmp_path / "same", N_all)
    subset = fit(market, tmp_path / "subset", 4)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, same.model.state_dict()[key]), key
    assert [h["val_rank_ic"] for h in full.history] == [h["val_rank_ic"] for h in same.history]
    weights = subset.model.state_dict()
    assert any(not torch.equal(v, weights[k]) for k, v in full.model.state_dict().items())

    # Prediction reads every stock: each traded stock of every date gets a forecast, the
    # same as the model gives when run on the full cross-section by hand.
    out = predict_stage1(subset.model, m.features)
    traded = m.features.mask & (~m.panel.is_index)[None, :]
    assert np.isfinite(out["pred"][traded]).all() and (out["pred"][traded] != 0).all()
    x = torch.from_numpy(np.nan_to_num(m.features.values[:5]).astype(np.float32))
    with torch.no_grad():
        direct = subset.model(x, torch.from_numpy(m.features.mask[:5]))["pred"]
    np.testing.assert_allclose(out["pred"][:5], direct.numpy(), atol=1e-6)


def test_setting_and_multitask_sectors_follow_the_drawn_stocks(market):
    assert load_config("small").stage1.max_stocks is None  # default: all stocks
    m, config = market
    config = Stage1Config(**{**config.to_dict(), "multitask": True})
    sectors = np.arange(config.num_stocks) % config.num_sectors
    module = Stage1Module(config, sector_ids=sectors)
    data = CrossSectionDataset(m.features.values, m.features.mask, m.labels, m.split.train,
                               target=~m.panel.is_index, corr_window=5)  # fmt: skip
    batch = next(iter(DateBatches(data, 8, max_stocks=3, rank=0, world_size=1)))
    K = batch["stock_ids"].shape[1]
    assert batch["corr"].shape == (8, K, K)
    ids = batch["stock_ids"][0]
    full_corr = data.batch(np.arange(1))["corr"][0]
    torch.testing.assert_close(batch["corr"][0], full_corr[ids][:, ids], equal_nan=True)
    module.eval()  # no dropout: outputs comparable
    with torch.no_grad():  # the module reads each column as the stock it names
        by_id = module.model(batch["x"], batch["mask"], stock_ids=batch["stock_ids"])["pred"]
        by_position = module.model(batch["x"], batch["mask"])["pred"]
        torch.testing.assert_close(module(batch)["pred"], by_id)
        assert not torch.allclose(by_id, by_position)
    losses = module._losses(batch, module(batch))
    assert torch.isfinite(losses["sector"]) and torch.isfinite(losses["total"])
    # the sector loss reads the drawn stocks' own sectors: with every logit on the right
    # sector it is ~0, which it could not be if the sectors were read by column position
    logits = torch.full((*batch["mask"].shape, config.num_sectors), -20.0)
    logits.scatter_(2, torch.as_tensor(sectors)[batch["stock_ids"]][..., None], 20.0)
    out = {**module(batch), "sector_logits": logits}
    assert module._losses(batch, out)["sector"] < 1e-6


def test_the_run_trains_stage1_with_the_configured_max_stocks(tmp_path):
    from relcast.run.context import RunContext

    overrides = ["data.source=synthetic", "data.synthetic_stocks=6"]
    ctx = RunContext(load_config(overrides=[*overrides, "stage1.max_stocks=3"]), tmp_path / "a")
    assert ctx.stage1_spec.max_stocks == 3  # the full model and the fold models alike
    assert Stage1Spec.from_dict(ctx.stage1_spec.to_dict()).max_stocks == 3  # saved with it
    ctx = RunContext(load_config(overrides=overrides), tmp_path / "b")
    assert ctx.stage1_spec.max_stocks is None
