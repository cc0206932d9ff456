"""The extractors that read the peers (#24 item 2): leave-self-out, lead-lag and the
orthogonal wrapper. Numbers against a loop over stocks, masked stocks, no look-ahead, a
planted lead-lag recovered, and columns that own history explains linearly removed."""

import dataclasses

import numpy as np
import pytest
import torch

from relcast.config import RelcastConfigError, load_config
from relcast.models.cross_sectional import CrossSectionalTransformer, Stage1Config, predict_stage1
from relcast.models.extractors import RelationshipExtractor, masked_features
from relcast.models.neighbours import (
    LeadLagExtractor,
    LeaveSelfOutExtractor,
    OrthogonalExtractor,
)
from relcast.relationships.store import extractor_from_spec, make_extractor
from relcast.training.specs import ExtractorSpec


@pytest.fixture(scope="module")
def market(make_market):
    m = make_market(10, 360, seed=3, horizons=1, missing_prob=0.05)
    torch.manual_seed(0)
    config = Stage1Config(
        num_features=m.features.values.shape[2], num_stocks=len(m.panel.symbols), horizons=1,
        d_model=16, num_heads=2, num_layers=2, relationship_dim=6, dropout=0.0,
    )  # fmt: skip
    model = CrossSectionalTransformer(config).eval()  # untrained: the arithmetic is the point
    with torch.no_grad():
        model.stock_embedding.weight.normal_()
    return m, model


def test_leave_self_out_is_the_peers_vectors_along_the_attention(market):
    m, model = market
    f = m.features
    idx = np.arange(100, 140)
    got = LeaveSelfOutExtractor().extract(model, f, idx)
    assert got.names == [f"lso_{k}" for k in range(6)]
    out = predict_stage1(model, f, dates_index=idx, need_weights=True, average_heads=True)
    att, rel = out["attention"][:, -1], out["relationship"]  # (D, N, N), (D, N, K)
    checked = 0
    for d, t in enumerate(idx):
        for i in np.flatnonzero(f.mask[t]):
            peers = [j for j in np.flatnonzero(f.mask[t]) if j != i]
            w = att[d, i, peers] / att[d, i, peers].sum()
            want = (w[:, None] * rel[d, peers]).sum(0)
            np.testing.assert_allclose(got.values[d, i], want, rtol=1e-4, atol=1e-6)
            checked += 1
        assert np.isnan(got.values[d, ~f.mask[t]]).all()  # masked stocks: no row
    assert checked > 300


def test_leave_self_out_ignores_masked_stocks_and_later_dates(market):
    m, model = market
    f = m.features
    t = int(np.flatnonzero((~f.mask[60:]).any(1))[0]) + 60  # a date with a suspended stock
    j = int(np.flatnonzero(~f.mask[t])[0])
    changed = dataclasses.replace(f, values=f.values.copy())
    changed.values[t, j] = 1e6  # what a masked stock carries must not leak in
    changed.values[t + 1 :] = np.random.default_rng(0).normal(size=changed.values[t + 1 :].shape)
    ext = LeaveSelfOutExtractor()
    a = ext.extract(model, f, np.array([t])).values
    b = ext.extract(model, changed, np.array([t])).values
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], atol=1e-5)


def test_lead_lag_recovers_the_peer_a_stock_attends_to(market, monkeypatch):
    """Stage1 puts half of stock i's attention on itself and half on stock i+1: lag l's
    column of stock i is stock i+1's ret1 l days ago (itself left out), whatever the rest."""
    import relcast.models.neighbours as neighbours

    m, model = market
    f = m.features
    N = len(f.symbols)
    plan = 0.5 * np.eye(N) + 0.5 * np.roll(np.eye(N), 1, axis=1)  # row i: i and i + 1

    def planted(model, features, block, need_weights=False, outputs=None):
        return {"attention": np.broadcast_to(plan, (len(block), 1, N, N)).astype(np.float32)}

    monkeypatch.setattr(neighbours, "stage1_outputs", planted)
    idx = np.arange(120, 200)
    got = LeadLagExtractor(lags=3).extract(model, f, idx)
    assert got.names == ["ll_ret1_lag0", "ll_ret1_lag1", "ll_ret1_lag2"]
    ret1 = f.values[..., f.columns(["ret1"])[0]]
    checked = 0
    for d, t in enumerate(idx):
        for i in np.flatnonzero(f.mask[t]):
            nxt = (i + 1) % N
            for lag in range(3):
                if f.mask[t, nxt] and f.mask[t - lag, nxt]:
                    assert got.values[d, i, lag] == pytest.approx(ret1[t - lag, nxt], abs=1e-5)
                    checked += 1
                elif not f.mask[t, nxt]:  # the only peer is gone: nothing to read
                    assert got.values[d, i, lag] == 0.0
    assert checked > 1000


def test_lead_lag_reads_nothing_after_its_date(market):
    m, model = market
    f = m.features
    t = 200
    changed = dataclasses.replace(f, values=f.values.copy())
    changed.values[t + 1 :] = np.random.default_rng(1).normal(size=changed.values[t + 1 :].shape)
    ext = LeadLagExtractor(lags=3)
    a = ext.extract(model, f, np.array([t])).values
    b = ext.extract(model, changed, np.array([t])).values
    np.testing.assert_allclose(a, b, atol=1e-6, equal_nan=True)
    assert np.isfinite(a).sum() > 10


class Planted(RelationshipExtractor):
    """Column 0: a linear mix of own columns; column 1: a signal own history lacks."""

    def __init__(self, signal: np.ndarray) -> None:
        self.signal = signal

    def extract(self, model, features, dates_index=None):
        idx = np.arange(len(features.dates)) if dates_index is None else np.asarray(dates_index)
        own = np.nan_to_num(features.values[idx][..., features.columns(["ret1", "ma5"])])
        mix = 2.0 * own[..., 0] - own[..., 1] + 0.3
        values = np.stack([mix, self.signal[idx] + 0.5 * own[..., 0]], axis=-1)
        return masked_features(features, idx, ["rel_emb_0", "rel_emb_1"], values)


def test_orthogonal_removes_what_own_columns_say_and_keeps_the_rest(market):
    m, model = market
    f, split = m.features, m.split
    signal = np.random.default_rng(2).normal(size=f.mask.shape)
    ext = OrthogonalExtractor(Planted(signal), max_dates=100).fit(model, f, m.labels, split)
    test = np.asarray(split.test)
    got = ext.extract(model, f, test)
    assert got.names == ["orth_rel_emb_0", "orth_rel_emb_1"]
    cells = f.mask[test]
    assert np.abs(got.values[cells][:, 0]).max() < 1e-4  # own columns say all of it
    kept = np.corrcoef(got.values[cells][:, 1], signal[test][cells])[0, 1]
    raw = Planted(signal).extract(model, f, test).values[cells][:, 1]
    before = np.corrcoef(raw, signal[test][cells])[0, 1]
    # the part own history lacks survives, its own share removed (the fit on ~1,000 training
    # cells and 34 regressors takes a little of the signal's noise with it)
    assert kept > 0.97 and kept > before + 0.02, (kept, before)
    # fitted on training dates only: what the other dates hold does not move the fit
    later = dataclasses.replace(f, values=f.values.copy())
    later.values[split.valid[0] :] *= 3.0
    refit = OrthogonalExtractor(Planted(signal), max_dates=100).fit(model, later, m.labels, split)
    np.testing.assert_allclose(refit.coef_, ext.coef_)
    loaded = OrthogonalExtractor(Planted(signal)).load_fitted_state(ext.fitted_state())
    np.testing.assert_array_equal(loaded.extract(model, f, test).values, got.values)


def test_extractor_names_join_with_plus_and_reach_the_spec():
    cfg = load_config(
        overrides=[
            "relationships.extractor=v2+lead_lag",
            "relationships.orthogonal=true",
            "relationships.lead_lag.lags=2",
        ]  # fmt: skip
    )
    spec = ExtractorSpec.from_config(cfg)
    assert (spec.kind, spec.orthogonal, spec.lead_lag_lags) == ("v2+lead_lag", True, 2)
    assert ExtractorSpec.from_dict(spec.to_dict()) == spec
    ext = extractor_from_spec(spec, None, None)
    assert isinstance(ext, OrthogonalExtractor)
    parts = ext.base.extractors
    assert isinstance(parts[1], LeadLagExtractor) and parts[1].lags == 2
    for bad in ("v4", "lead_lag+lead_lag", "v2+v4"):
        with pytest.raises(RelcastConfigError):
            load_config(overrides=[f"relationships.extractor={bad}"])
    assert isinstance(make_extractor("leave_self_out"), LeaveSelfOutExtractor)


def test_a_run_with_the_peer_extractors_predicts_from_its_saved_state(tmp_path):
    """The three new columns go through the out-of-fold store, Stage3 and evaluation; the
    run's saved extractor (the orthogonal fit) serves ``predict`` without fitting again."""
    import json

    from conftest import TINY_RUN

    from relcast.config import load_config
    from relcast.models import neighbours
    from relcast.run.inference import predict_date
    from relcast.run.runner import Pipeline

    cfg = load_config(
        overrides=[
            *TINY_RUN, "data.source=synthetic", "data.synthetic_stocks=8",
            "data.synthetic_days=300", "relationships.extractor=v2+leave_self_out+lead_lag",
            "relationships.orthogonal=true", "relationships.lead_lag.lags=2",
            "stage3.feature_sets=[hybrid]",
        ]
    )  # fmt: skip
    out = tmp_path / "run"
    pipe = Pipeline(cfg, out)
    pipe.run()
    data = tmp_path / "market.csv"
    pipe.ctx.panel.to_frame().to_csv(data, index=False)
    steps = json.loads((out / "run.json").read_text())["steps"]
    assert steps["extract"]["columns"] == 4 + 4 + 2  # rel_emb, lso (relationship_dim 4), ll
    stored = np.load(out / "relationships.npz")
    names = [str(n) for n in stored["names"]]
    assert names[:1] == ["orth_rel_emb_0"] and names[-1] == "orth_ll_ret1_lag1"
    assert set(np.unique(stored["fold_of"])) >= {0, 1}  # out of fold on the training span
    assert "hybrid_gru" in json.loads((out / "metrics.json").read_text())["models"]

    def refit(*args, **kwargs):
        raise AssertionError("the saved orthogonal fit was fitted again")

    original = neighbours.OrthogonalExtractor.fit
    neighbours.OrthogonalExtractor.fit = refit
    try:
        table = predict_date(out, str(data))
    finally:
        neighbours.OrthogonalExtractor.fit = original
    assert len(table) > 0 and np.isfinite(table["pred"]).all()


def test_peer_extractors_side_by_side_share_one_stage1_pass(market, monkeypatch):
    """v2+leave_self_out+lead_lag with neighbours: the three peer extractors read one Stage1
    attention pass per block of dates, and give the values each gives alone."""
    import relcast.models.neighbours as neighbours

    m, model = market
    f = m.features
    idx = np.arange(100, 180)  # two blocks of dates
    each = (LeaveSelfOutExtractor(), LeadLagExtractor(lags=2), neighbours.NeighbourExtractor())
    alone = [e.extract(model, f, idx) for e in each]
    calls = []
    real = neighbours.stage1_outputs
    monkeypatch.setattr(
        neighbours, "stage1_outputs", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    both = make_extractor("v2+leave_self_out+lead_lag", lead_lag_lags=2, neighbours=True).extract(
        model, f, idx
    )
    assert len(calls) == 2  # one pass per block of 64 dates, not one per extractor
    names = [n for rel in alone for n in rel.names]
    assert both.names == [f"rel_emb_{k}" for k in range(6)] + names
    want = np.concatenate([rel.values for rel in alone], axis=-1)
    np.testing.assert_allclose(both.values[..., 6:], want, rtol=1e-6, equal_nan=True)
