"""Relationship extractors V1/V2/V3: numbers vs the Stage1 model, training-span-only fitting,
and the contrastive encoder recovering planted sectors."""

import dataclasses

import numpy as np
import pytest
import torch

from relcast.features.build import build_features
from relcast.features.labels import forward_returns
from relcast.models.cross_sectional import CrossSectionalTransformer, Stage1Config
from relcast.models.extractors import (
    AttentionExtractor,
    CombinedExtractor,
    EmbeddingExtractor,
    RelationshipFeatures,
    correlation_positives,
    info_nce_loss,
    trailing_returns_from_labels,
)
from relcast.relationships.store import make_extractor
from relcast.training.contrastive import ContrastiveExtractor, ContrastiveSettings
from relcast.training.stage1 import encode_sectors

H = 2


@pytest.fixture(scope="module")
def market(make_market):
    m = make_market(10, 360, seed=3, horizons=H, missing_prob=0.05)
    panel, truth, split, features, labels = m.panel, m.truth, m.split, m.features, m.labels
    sectors, num_sectors = encode_sectors(panel.sectors, len(panel.symbols))
    torch.manual_seed(0)
    config = Stage1Config(
        num_features=features.values.shape[2],
        num_stocks=len(panel.symbols),
        num_sectors=num_sectors,
        horizons=H,
        d_model=16,
        num_heads=2,
        num_layers=2,
        relationship_dim=6,
        dropout=0.0,
    )
    # An untrained Stage1 is enough to check the extractors' arithmetic against the model.
    model = CrossSectionalTransformer(config, sector_ids=torch.as_tensor(sectors)).eval()
    with torch.no_grad():
        model.stock_embedding.weight.normal_()
    return dict(
        panel=panel,
        truth=truth,
        split=split,
        features=features,
        labels=labels,
        sectors=sectors,
        model=model,
    )


def _reference_attention(model, features, t):
    x = torch.from_numpy(np.nan_to_num(features.values[t : t + 1]))
    m = torch.from_numpy(features.mask[t : t + 1])
    with torch.no_grad():
        att = model(x, m, need_weights=True)["attention"][-1]  # (1, heads, N, N)
    return att.mean(1)[0].numpy()


def test_v1_attention_matches_model_and_summaries(market):
    f, model, panel = market["features"], market["model"], market["panel"]
    ext = AttentionExtractor(is_index=panel.is_index, sector_ids=market["sectors"])
    idx = np.arange(100, 140)
    rel = ext.extract(model, f, idx)
    N = len(f.symbols)
    assert rel.values.shape == (40, N, N + 2)
    assert rel.names[:N] == [f"attn_{s}" for s in f.symbols]
    assert rel.names[N:] == ["attention_to_index", "attention_to_sector"]
    np.testing.assert_array_equal(rel.mask, f.mask[idx])
    assert (~rel.mask).any(), "the fixture should contain suspended stocks"
    assert np.isnan(rel.values[~rel.mask]).all() and np.isfinite(rel.values[rel.mask]).all()

    att = rel.values[..., :N]
    for k in (0, 17, 39):
        t = idx[k]
        ref = _reference_attention(model, f, t)
        valid = f.mask[t]
        np.testing.assert_allclose(att[k][valid], ref[valid], atol=1e-5)
        # suspended stocks get no attention; rows sum to one over present stocks
        np.testing.assert_allclose(att[k][valid][:, ~valid], 0.0, atol=1e-7)
        np.testing.assert_allclose(att[k][valid].sum(-1), 1.0, atol=1e-5)
        # summaries, by a plain loop
        i_index = int(np.flatnonzero(panel.is_index)[0])
        for i in np.flatnonzero(valid)[:4]:
            assert rel.values[k, i, N] == pytest.approx(ref[i, i_index], abs=1e-5)
            peers = [
                j
                for j in range(N)
                if j != i and valid[j] and market["sectors"][j] == market["sectors"][i]
            ]
            expect = np.mean(ref[i, peers]) if peers else 0.0
            assert rel.values[k, i, N + 1] == pytest.approx(expect, abs=1e-5)


def test_v2_bottleneck_is_the_models_relationship_output(market):
    f, model = market["features"], market["model"]
    rel = EmbeddingExtractor("bottleneck").extract(model, f, np.arange(200, 210))
    assert rel.names == [f"rel_emb_{k}" for k in range(6)]
    x = torch.from_numpy(np.nan_to_num(f.values[200:210]))
    with torch.no_grad():
        ref = model(x, torch.from_numpy(f.mask[200:210]), need_weights=False)["relationship"]
    m = rel.mask
    np.testing.assert_allclose(rel.values[m], ref.numpy()[m], atol=1e-5)


def test_v2_pca_is_fitted_on_the_training_span_only(market):
    f, model, split, labels = market["features"], market["model"], market["split"], market["labels"]
    ext = EmbeddingExtractor("pca", n_components=4)
    with pytest.raises(RuntimeError, match="not fitted"):
        ext.extract(model, f, np.arange(5))
    ext.fit(model, f, labels, split)
    # scramble every feature outside the training span: the fitted PCA must not move
    g = f.values.copy()
    outside = np.setdiff1d(np.arange(len(f.dates)), split.train)
    g[outside] = np.random.default_rng(0).standard_normal(g[outside].shape) * 5
    from relcast.features.featureset import FeatureSet

    f2 = FeatureSet(f.dates, f.symbols, f.names, g, f.mask, f.groups)
    ext2 = EmbeddingExtractor("pca", n_components=4).fit(model, f2, labels, split)
    np.testing.assert_allclose(ext.components_, ext2.components_, atol=1e-6)
    np.testing.assert_allclose(ext.mean_, ext2.mean_, atol=1e-6)

    rel = ext.extract(model, f, split.train)
    vals = rel.values[rel.mask]  # (cells, 4): centred and ordered by variance on the train span
    np.testing.assert_allclose(vals.mean(0), 0.0, atol=1e-4)
    var = vals.var(0)
    assert (np.diff(var) <= 1e-9).all()
    assert (np.diff(ext.explained_variance_ratio_) <= 0).all()


def test_info_nce_matches_a_loop_reference():
    g = torch.Generator().manual_seed(0)
    B, N, P, tau = 2, 5, 3, 0.5
    z = torch.nn.functional.normalize(torch.randn(B, N, P, generator=g), dim=-1)
    pos = torch.rand(B, N, N, generator=g) > 0.6
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[1, 2] = False
    losses = []
    for b in range(B):
        for i in range(N):
            if not valid[b, i]:
                continue
            keys = [j for j in range(N) if j != i and valid[b, j]]
            ps = [j for j in keys if pos[b, i, j]]
            if not ps:
                continue
            logits = torch.stack([z[b, i] @ z[b, j] / tau for j in keys])
            lse = torch.logsumexp(logits, 0)
            losses.append(-torch.stack([z[b, i] @ z[b, j] / tau - lse for j in ps]).mean())
    ref = torch.stack(losses).mean()
    torch.testing.assert_close(info_nce_loss(z, pos, valid, tau), ref)


def test_correlation_positives_use_past_returns_only():
    rng = np.random.default_rng(0)
    T, N = 120, 6
    sector = np.array([0, 0, 0, 1, 1, 1])
    r = rng.standard_normal((T, 2))[:, sector] + 0.3 * rng.standard_normal((T, N))
    idx = np.array([40, 80])
    pos = correlation_positives(r, idx, window=30, top_k=2)
    same = sector[:, None] == sector[None, :]
    assert pos.sum(-1).max() == 2 and not pos[:, np.arange(N), np.arange(N)].any()
    assert (pos <= same[None]).all()  # the planted factor decides who is close
    future = r.copy()
    future[41:] = rng.standard_normal((T - 41, N))
    np.testing.assert_array_equal(correlation_positives(future, idx[:1], 30, 2), pos[:1])
    # labels -> returns realised by t: label_1[t-1] is known at t, label_1[t] is not
    labels = rng.standard_normal((T, N, 2)).astype(np.float32)
    realised = trailing_returns_from_labels(labels)
    np.testing.assert_array_equal(realised[1:], labels[:-1, :, 0])
    assert np.isnan(realised[0]).all()


@pytest.mark.parametrize("positives", ["sector", "corr"])
def test_v3_contrastive_recovers_sectors(market, positives):
    f, split, labels, truth = market["features"], market["split"], market["labels"], market["truth"]
    ext = ContrastiveExtractor(
        ContrastiveSettings(
            proj_dim=8, hidden_size=32, positives=positives, steps=150, corr_window=40, top_k=2
        ),
        sector_ids=market["sectors"] if positives == "sector" else None,
    )
    ext.fit(None, f, labels, split)
    assert np.mean(ext.loss_history_[-20:]) < np.mean(ext.loss_history_[:20])
    rel = ext.extract(None, f, split.test)
    N = len(f.symbols)
    assert rel.names[:8] == [f"ctr_{k}" for k in range(8)]
    assert rel.names[8:] == [f"ctr_sim_{s}" for s in f.symbols]
    sims = rel.values[..., 8:]  # (T', N, N) cosine
    stocks = truth.sector_of >= 0
    same = (truth.sector_of[:, None] == truth.sector_of[None, :]) & ~np.eye(N, dtype=bool)
    cross = truth.sector_of[:, None] != truth.sector_of[None, :]
    pair_ok = rel.mask[:, :, None] & rel.mask[:, None, :] & (stocks[:, None] & stocks[None, :])
    s_same = sims[pair_ok & same[None]].mean()
    s_cross = sims[pair_ok & cross[None]].mean()
    # sector positives are told the answer; correlation positives must find it from returns
    margin = 0.3 if positives == "sector" else 0.05
    assert s_same > s_cross + margin, (s_same, s_cross)


def test_combined_and_registry(market):
    f, model, panel = market["features"], market["model"], market["panel"]
    ext = make_extractor("v1+v2", is_index=panel.is_index)
    assert isinstance(ext, CombinedExtractor)
    rel = ext.extract(model, f, np.arange(150, 160))
    N = len(f.symbols)
    assert rel.values.shape == (10, N, N + 2 + 6)
    assert rel.names[-1] == "rel_emb_5"
    frame = rel.to_frame()
    assert len(frame) == rel.mask.sum() and list(frame.columns[:2]) == ["date", "symbol"]
    assert isinstance(make_extractor("v3"), ContrastiveExtractor)
    with pytest.raises(ValueError, match="unknown extractor"):
        make_extractor("v4")
    with pytest.raises(ValueError, match="same dates"):
        a = RelationshipFeatures(f.dates[:2], f.symbols, ["a"], np.zeros((2, N, 1)), f.mask[:2])
        b = RelationshipFeatures(f.dates[2:4], f.symbols, ["b"], np.zeros((2, N, 1)), f.mask[2:4])
        RelationshipFeatures.concat([a, b])


def test_pipeline_v3_correlation_positives_respect_label_delay(tmp_path):
    """With ``data.label_delay=1`` a label at s is ``close[s+2]/close[s+1] - 1``: the returns V3
    correlates at date t must not change when prices after t change (the run's extractor
    once ignored the delay and read one day ahead)."""
    from relcast.config import load_config
    from relcast.run.runner import Pipeline

    config = load_config(
        overrides=[
            "data.source=synthetic",
            "data.synthetic_stocks=8",
            "data.synthetic_days=400",
            "data.label_delay=1",
            "relationships.extractor=v3",
        ]
    )
    pipe = Pipeline(config, tmp_path / "run")
    pipe.step("prepare")
    ext = pipe.ctx.make_extractor()
    ext.positives = "corr"  # only the return-based positives can see the future
    panel, H = pipe.ctx.panel, config.data.horizons
    features = build_features(panel, train_end=int(pipe.ctx.split.train[-1]))
    dates = np.arange(100, 300, 20)
    base = ext.positive_pairs(None, features, forward_returns(panel, H, delay=1), dates)
    assert base.any()
    for t in dates:  # prices from t + 1 on are replaced: nothing known at t moves
        values = panel.values.copy()  # (T, N, F)
        rng = np.random.default_rng(int(t))
        values[t + 1 :] *= np.exp(0.05 * rng.standard_normal(values[t + 1 :, :, :1].shape))
        later = forward_returns(dataclasses.replace(panel, values=values), H, delay=1)
        pos = ext.positive_pairs(None, features, later, np.array([t]))
        np.testing.assert_array_equal(pos[0], base[dates == t][0], err_msg=f"date {t}")


def test_stage1_score_is_the_models_forecast_zscored_per_date(market):
    from relcast.models.extractors import ScoreExtractor

    f, model = market["features"], market["model"]
    idx = np.arange(20, 60)
    got = ScoreExtractor(horizons=2).extract(model, f, idx)
    assert got.names == ["stage1_score_h1", "stage1_score_h2"]
    x = torch.from_numpy(np.nan_to_num(f.values[idx]))
    m = torch.from_numpy(f.mask[idx])
    with torch.no_grad():
        pred = model(x, m)["pred"].double().numpy()  # (T', N, H)
    for k, t in enumerate(idx):
        ok = f.mask[t]
        for h in range(2):
            p = pred[k, ok, h]
            want = (p - p.mean()) / p.std()
            np.testing.assert_allclose(got.values[k, ok, h], want, atol=1e-4)
        assert np.isnan(got.values[k, ~ok]).all()  # masked stocks get no score
    assert (~f.mask[idx]).any()  # the market has missing stocks on these dates


def test_make_extractor_appends_the_stage1_score(market):
    f, model = market["features"], market["model"]
    plain = make_extractor("v2").extract(model, f, np.arange(30, 40))
    both = make_extractor("v2", stage1_score=True).extract(model, f, np.arange(30, 40))
    assert both.names == plain.names + ["stage1_score_h1"]
    np.testing.assert_array_equal(both.values[..., :-1], plain.values)


def test_pipeline_extractor_carries_the_stage1_score(tmp_path):
    from relcast.config import load_config
    from relcast.models.extractors import ScoreExtractor
    from relcast.run.runner import Pipeline

    overrides = ["data.source=synthetic", "data.synthetic_stocks=6", "data.synthetic_days=200"]
    for on in (False, True):
        cfg = load_config(overrides=[*overrides, f"relationships.stage1_score={str(on).lower()}"])
        pipe = Pipeline(cfg, tmp_path / str(on))
        pipe.step("prepare")
        ext = pipe.ctx.make_extractor()
        parts = getattr(ext, "extractors", [ext])
        assert any(isinstance(p, ScoreExtractor) for p in parts) == on


def test_neighbour_features_are_attention_weighted_peer_averages(market):
    from relcast.models.neighbours import NeighbourExtractor

    f, model = market["features"], market["model"]
    names = list(f.groups["own"])[:3]
    idx = np.arange(100, 170)  # more than one block of dates
    rel = NeighbourExtractor(columns=names).extract(model, f, idx)
    assert rel.names == [f"nbr_{n}" for n in names]
    np.testing.assert_array_equal(rel.mask, f.mask[idx])
    assert np.isnan(rel.values[~rel.mask]).all() and np.isfinite(rel.values[rel.mask]).all()
    cols = [f.names.index(n) for n in names]
    for k in (0, 65, 69):
        t = idx[k]
        att, valid = _reference_attention(model, f, t), f.mask[t]
        for i in np.flatnonzero(valid)[:5]:  # a plain loop: the stock itself and masked left out
            peers = [j for j in range(len(valid)) if j != i and valid[j]]
            w = att[i, peers] / att[i, peers].sum()
            want = w @ f.values[t][peers][:, cols]
            np.testing.assert_allclose(rel.values[k, i], want, rtol=1e-4, atol=1e-5)


def test_neighbour_features_ignore_masked_stocks_values(market):
    from relcast.models.neighbours import NeighbourExtractor

    f, model = market["features"], market["model"]
    t = int(np.flatnonzero((~f.mask).any(1))[0])  # a date with a suspended stock
    j = int(np.flatnonzero(~f.mask[t])[0])
    changed = dataclasses.replace(f, values=f.values.copy())
    changed.values[t, j] = 1e6  # whatever a masked stock carries must not leak in
    ext = NeighbourExtractor()
    a = ext.extract(model, f, np.array([t])).values
    b = ext.extract(model, changed, np.array([t])).values
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], atol=1e-5)
    both = make_extractor("v2", neighbours=True).extract(model, f, np.arange(30, 40))
    assert both.names[-len(f.groups["own"]) :] == [f"nbr_{n}" for n in f.groups["own"]]


@pytest.mark.parametrize("kind", ["v1", "v2-pca", "v3", "v1+v2-pca+score"])
def test_a_saved_extractor_extracts_as_the_fitted_one(market, kind, tmp_path):
    """What fit learned goes to the run folder (safetensors) and comes back: a fresh
    extractor loaded from it extracts the same values without fitting (no refit on open)."""
    from relcast.runfolder import RunFolder

    f, model, labels, split = market["features"], market["model"], market["labels"], market["split"]
    method = "pca" if "pca" in kind else "bottleneck"
    name = kind.split("-")[0]
    args = dict(method=method, n_components=3, stage1_score="score" in kind)
    if name == "v3":
        args.update(steps=5, sector_ids=market["sectors"], identity_dim=2)
    fitted = make_extractor(name, **args).fit(model, f, labels, split)
    state = fitted.fitted_state()
    assert bool(state) == (kind != "v1")  # V1 and the score learn nothing
    folder = RunFolder(tmp_path)
    folder.save_extractor(fitted, {"kind": name})
    arrays, spec = folder.load_extractor()
    assert spec == {"kind": name} and sorted(arrays) == sorted(state)
    fresh = make_extractor(name, **args)
    if name == "v3":  # a fit would train the encoder again: the load must not
        fresh.fit = lambda *a, **k: pytest.fail("the saved extractor was fitted again")
    loaded = fresh.load_fitted_state(arrays)
    idx = np.arange(200, 260)
    want, got = fitted.extract(model, f, idx), loaded.extract(model, f, idx)
    assert got.names == want.names
    np.testing.assert_array_equal(got.values, want.values)
    if kind != "v1":  # an unfitted extractor does not extract these values
        with pytest.raises((RuntimeError, AssertionError)):
            np.testing.assert_array_equal(
                make_extractor(name, **args).extract(model, f, idx).values, want.values
            )
