"""Stage3 training: quantiles that mean what they say, determinism, the three feature sets."""

from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from relcast.features.featureset import FeatureSet
from relcast.relationships.store import Stage1Fit, StorePlan
from relcast.training.specs import Stage1Spec, Stage3Spec, TrainerSpec
from relcast.training.stage3 import fit_stage3, predict_stage3
from relcast.training.stage3_inputs import assemble_inputs


def planted_features(T=300, N=8, seed=0, noise=0.5):
    """Own features x ~ N(0, 1); label y[t] = f(x[t], x[t-2]) + N(0, noise^2) for 2 horizons."""
    rng = np.random.default_rng(seed)
    own = rng.normal(size=(T, N, 2)).astype(np.float32)
    index = np.repeat(rng.normal(size=(T, 1, 1)), N, axis=1).astype(np.float32)
    calendar = np.repeat((np.arange(T) % 5 / 4.0)[:, None, None], N, axis=1).astype(np.float32)
    values = np.concatenate([own, index, calendar], axis=-1)
    mask = np.ones((T, N), dtype=bool)
    mask[T // 6 : T // 6 + 3, N - 1] = False  # a suspension
    values[~mask] = np.nan
    signal = np.zeros((T, N), dtype=np.float32)
    signal[2:] = 0.6 * own[2:, :, 0] + 0.4 * own[:-2, :, 1]  # needs the history, not just t
    labels = signal[:, :, None] + noise * rng.normal(size=(T, N, 2)).astype(np.float32)
    labels[-2:] = np.nan  # forward returns run off the end
    features = FeatureSet(
        dates=np.arange(T).astype("datetime64[D]").astype("datetime64[ns]"),
        symbols=np.array([f"S{i}" for i in range(N)]),
        names=["own_a", "own_b", "idx_ret", "dow"],
        values=values,
        mask=mask,
        groups={"own": ["own_a", "own_b"], "index": ["idx_ret"], "calendar": ["dow"]},
    )
    return features, labels, signal


def thirds(T, embargo=2):
    a, b = int(T * 0.6), int(T * 0.8)
    return SimpleNamespace(
        train=np.arange(0, a), valid=np.arange(a + embargo, b), test=np.arange(b + embargo, T)
    )


def test_quantiles_ordered_and_cover_80_percent(tmp_path):
    """Known Gaussian noise (s = 0.5): the 10-90% interval should hold ~80% of test labels.

    Tolerance +/- 8 points: ~460 test windows x 2 horizons give a sampling std of about
    sqrt(.8 * .2 / 460) = 1.9 points, and a quantile misplaced by 0.1 s moves coverage by
    ~3.5 points; a model that ignored the noise scale (width off by 2x) would land near 50%
    or 97% and fail.
    """
    s = 0.5
    features, labels, signal = planted_features(noise=s)
    inputs = assemble_inputs(features, feature_set="own")
    split = thirds(len(features.dates))
    result = fit_stage3(
        "gru",
        inputs,
        labels,
        split,
        Stage3Spec(
            lookback=5,
            hparams={"hidden_size": 16, "num_layers": 1, "dropout": 0.0},
            max_epochs=25,
            batch_size=128,
            lr=1e-2,
            patience=25,
            seed=0,
            label_norm="none",
        ),
        TrainerSpec(out_dir=tmp_path, progress=False),
    )
    out = predict_stage3(result, inputs, split.test)
    pred, point = out["pred"], out["point"]  # (T, N, H, 3), (T, N, H)
    have = np.isfinite(pred).all(axis=(-1, -2))
    y = labels[have]  # (M, H)
    q = pred[have]  # (M, H, 3)
    assert have.sum() > 400
    assert (np.diff(q, axis=-1) > 0).all()
    inside = (y >= q[..., 0]) & (y <= q[..., 2])
    coverage = inside[np.isfinite(y)].mean()
    assert abs(coverage - 0.8) < 0.08, coverage
    # the interval has the width of the planted noise: 2 * 1.2816 * s (true quantiles)
    width = (q[..., 2] - q[..., 0]).mean()
    assert abs(width / (2 * 1.2816 * s) - 1) < 0.25, width
    # and the median found the planted function, including its lag-2 term
    assert np.corrcoef(point[have][:, 0], signal[have])[0, 1] > 0.9
    assert np.isnan(pred[~have]).all()
    assert result.seconds_per_epoch > 0 and result.windows_per_second > 0
    assert len(result.history) >= 1 and np.isfinite(result.best_val_rank_ic)


@pytest.mark.parametrize("model_name", ["tcn", "lstm"])
def test_same_seed_same_predictions(tmp_path, model_name):
    features, labels, _ = planted_features(T=80, N=4)
    inputs = assemble_inputs(features, feature_set="own")
    split = thirds(80)

    def run(seed, sub):
        result = fit_stage3(
            model_name,
            inputs,
            labels,
            split,
            Stage3Spec(
                lookback=6, hparams={"hidden_size": 8}, max_epochs=2, batch_size=32, seed=seed
            ),
            TrainerSpec(out_dir=tmp_path / sub, progress=False),
        )
        return predict_stage3(result, inputs, split.test)["pred"]

    first, again, other = run(1, "a"), run(1, "b"), run(2, "c")
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(np.nan_to_num(first), np.nan_to_num(other))


def test_rawconcat_width_and_layout(tmp_path):
    features, labels, _ = planted_features(T=60, N=5)
    own = assemble_inputs(features, feature_set="own")
    raw = assemble_inputs(features, feature_set="rawconcat")
    N, F_own = 5, 2
    assert own.num_features == F_own + 1 + 1
    assert raw.cross_width == N * F_own  # every stock's own block, and own's x
    assert raw.groups["all_own"][:F_own] == ["S0:own_a", "S0:own_b"]
    assert raw.names == own.names == ["own_a", "own_b", "idx_ret", "dow"]
    batch = next(iter(raw.loader(4, labels, batch_size=16)))
    x, t, n = batch["x"].numpy(), batch["t"].numpy(), batch["n"].numpy()
    assert x.shape == (16, 4, raw.num_features)
    last = batch["cross"].numpy()[batch["cross_index"][:, -1].numpy()]  # (B, N * F_own)
    # the last step's block of stock j is stock j's own features at the window end
    for j in range(N):
        want = np.nan_to_num(features.values[t, j, :F_own])
        want[~features.mask[t, j]] = 0.0
        np.testing.assert_array_equal(last[:, j * F_own : (j + 1) * F_own], want)
    np.testing.assert_array_equal(x[:, -1], features.values[t, n])
    # and a model trains and predicts on it, saved and loaded with its projection
    result = fit_stage3(
        "gru",
        raw,
        labels,
        thirds(60),
        Stage3Spec(lookback=4, hparams={"hidden_size": 8}, max_epochs=1, batch_size=64),
        TrainerSpec(out_dir=tmp_path, progress=False),
    )
    assert result.model.config.num_features == 8 + raw.num_features
    point = predict_stage3(result, raw)["point"]
    assert np.isfinite(point).any()
    from relcast.runfolder.formats import load_stage3, save_module

    path = save_module(tmp_path / "m.safetensors", result.model, asdict(result.model.config),
                       "gru", cross_input=result.model.spec())  # fmt: skip
    np.testing.assert_array_equal(predict_stage3(load_stage3(path), raw)["point"], point)


def test_rawconcat_projection_is_the_models_first_layer_on_the_whole_block():
    """Once per date or once per (stock, step), the model sees the same numbers: the same
    forecast as a model fed the raw every-stock block with the projection as its first layer."""
    from relcast.training.stage3 import build_model

    features, labels, _ = planted_features(T=40, N=5)
    raw = assemble_inputs(features, feature_set="rawconcat")
    torch.manual_seed(0)
    model = build_model("gru", raw, 1, None, 4, {"hidden_size": 8}).eval()
    for chunk_length in (None, 10):
        batch = next(iter(raw.loader(4, labels, batch_size=32, chunk_length=chunk_length)))
        got = model(batch)["pred"]
        block = batch["cross"][batch["cross_index"].clamp(min=0)]  # (B, S, N * F_own)
        z = model.project(block) * (batch["cross_index"] >= 0)[..., None]
        want = model.model({**batch, "x": torch.cat([z, batch["x"]], dim=-1)})["pred"]
        torch.testing.assert_close(got, want)


def test_single_target_stock(tmp_path):
    features, labels, _ = planted_features(T=80, N=4)
    inputs = assemble_inputs(features, feature_set="own")
    result = fit_stage3(
        "gru",
        inputs,
        labels,
        thirds(80),
        Stage3Spec(
            lookback=5, hparams={"hidden_size": 8}, max_epochs=1, batch_size=32, label_norm="none"
        ),
        TrainerSpec(out_dir=tmp_path, progress=False),
        stocks=["S2"],
    )
    assert result.num_train_windows == len(thirds(80).train) - 4
    point = predict_stage3(result, inputs, stocks=["S2"])["point"]
    assert np.isfinite(point[:, 2]).any() and np.isnan(np.delete(point, 2, axis=1)).all()


def test_hybrid_needs_relationships_and_checks_their_shape():
    features, _, _ = planted_features(T=30, N=3)
    with pytest.raises(ValueError, match="relationship"):
        assemble_inputs(features, feature_set="hybrid")
    with pytest.raises(ValueError, match="shape"):
        assemble_inputs(features, (np.zeros((30, 2, 4)), list("abcd")), feature_set="hybrid")
    rel = np.ones((30, 3, 4), dtype=np.float32)
    rel[10, 1] = np.nan  # no relationship features there: that cell is not a valid input
    hybrid = assemble_inputs(features, (rel, list("abcd")), feature_set="hybrid")
    assert hybrid.num_features == 4 + 4 and hybrid.groups["relationship"] == list("abcd")
    assert hybrid.names[-4:] == list("abcd")
    assert not hybrid.valid[10, 1] and hybrid.valid[10, 0]


def test_hybrid_beats_own_out_of_fold_fast(tmp_path):
    """The design's point, in the default test run: Stage1 relationship features let Stage3
    see the leader.

    A follower's next return loads on its leader's return today; its own history carries
    nothing of it, so ``own`` ranks followers near chance, while ``hybrid`` reads Stage1's
    out-of-fold relationship features (its bottleneck, which the prediction head reads).
    Small enough for ``make test``: 10 stocks in 5 pairs, a strong lead-lag (1.2), five own
    indicators (no index features, which let Stage1 time the followers as a group instead of
    learning the pairs), a 2-layer d_model 32 Stage1 with the default (IC) loss. Measured on
    data seeds 0/1/2: follower test Rank IC own 0.04/-0.04/0.01, hybrid 0.38/0.50/0.65.
    """
    from relcast.data.synthetic import synthetic_market
    from relcast.features.build import build_features
    from relcast.features.labels import forward_returns
    from relcast.features.splits import chronological_split
    from relcast.models.cross_sectional import Stage1Config
    from relcast.models.extractors import EmbeddingExtractor
    from relcast.relationships.store import build_relationship_store

    panel, truth = synthetic_market(
        num_stocks=10, num_days=600, seed=0, lead_lag_pairs=5, lead_lag_strength=1.2
    )
    labels = forward_returns(panel, 1)
    split = chronological_split(panel.dates, embargo=1)
    built = build_features(panel, train_end=int(split.train[-1]))
    groups = {
        "own": ["ret1", "ret5", "ret10", "rsi14", "vol20"],
        "calendar": built.groups["calendar"],
    }
    names = [n for g in groups.values() for n in g]
    features = FeatureSet(
        built.dates, built.symbols, names, built.values[:, :, built.columns(names)], built.mask,
        groups,
    )  # fmt: skip
    stocks = ~panel.is_index
    config = Stage1Config(
        num_features=len(names), num_stocks=len(panel.symbols), horizons=1, d_model=32,
        num_heads=4, num_layers=2, relationship_dim=8, dropout=0.1,
    )  # fmt: skip
    store = build_relationship_store(
        features,
        labels,
        split,
        EmbeddingExtractor("bottleneck"),
        Stage1Fit(
            config=config,
            spec=Stage1Spec(max_epochs=20, patience=8, lr=3e-3, weight_decay=0.01),
            trainer=TrainerSpec(out_dir=tmp_path / "stage1", progress=False, accelerator="cpu"),
            target=stocks,
        ),
        StorePlan(n_folds=3),
    )
    # out of fold: Stage3's training dates carry features from models that never saw them
    assert (store.fold_of[split.train] >= 0).all()
    assert (store.fold_of[split.test] == -1).all()
    test_ic = _follower_test_rank_ic(
        features, store, panel, labels, split, stocks, truth, hidden_size=16, out=tmp_path
    )
    # 5 followers x ~85 test dates: the mean Rank IC has a standard error of ~0.06
    assert abs(test_ic["own"]) < 0.15, test_ic
    assert test_ic["hybrid"] > test_ic["own"] + 0.2, test_ic


@pytest.mark.slow  # ~25 s CPU for oof=False, ~55 s for oof=True (4 Stage1 fits)
@pytest.mark.parametrize("oof", [False, True])
def test_hybrid_beats_own_on_planted_lead_lag(tmp_path, oof):
    """The design's point: Stage1 relationship features let Stage3 see the leader.

    A follower's next return loads on its leader's return today; its own history carries
    nothing of it, so ``own`` should rank followers near chance and ``hybrid`` well above.
    2000 dates: with ~600 training dates Stage1 memorises the training span instead of
    learning the pairs (its follower Rank IC is ~0.26 in train and ~0.02 in test), and the
    relationship features then carry nothing for Stage3 to use.
    """
    from relcast.data.synthetic import synthetic_market
    from relcast.features.build import build_features
    from relcast.features.labels import forward_returns
    from relcast.features.splits import chronological_split
    from relcast.models.cross_sectional import Stage1Config
    from relcast.models.extractors import EmbeddingExtractor
    from relcast.relationships.store import build_relationship_store

    panel, truth = synthetic_market(
        num_stocks=20, num_days=2000, seed=0, lead_lag_pairs=10, lead_lag_strength=0.6
    )
    labels = forward_returns(panel, 1)
    split = chronological_split(panel.dates, embargo=1)
    features = build_features(panel, train_end=int(split.train[-1]))
    stocks = ~panel.is_index
    config = Stage1Config(
        num_features=len(features.names), num_stocks=len(panel.symbols), horizons=1,
        d_model=32, num_heads=4, num_layers=1, relationship_dim=8, dropout=0.1,
    )  # fmt: skip
    store = build_relationship_store(
        features,
        labels,
        split,
        EmbeddingExtractor("bottleneck"),
        Stage1Fit(
            config=config,
            spec=Stage1Spec(max_epochs=40, patience=10, lr=3e-3, weight_decay=0.01),
            trainer=TrainerSpec(out_dir=tmp_path / "stage1", progress=False),
            target=stocks,
        ),
        StorePlan(oof=oof, n_folds=3),
    )
    test_ic = _follower_test_rank_ic(
        features, store, panel, labels, split, stocks, truth, hidden_size=32, out=tmp_path
    )
    assert abs(test_ic["own"]) < 0.1, test_ic  # nothing in the follower's own history
    assert test_ic["hybrid"] > test_ic["own"] + 0.15, test_ic


def _follower_test_rank_ic(
    features, store, panel, labels, split, stocks, truth, *, hidden_size, out
):
    """Test Rank IC (horizon 1, followers only) of a small GRU on ``own`` and ``hybrid``."""
    from relcast.metrics import daily_rank_ic

    followers = np.flatnonzero(truth.leader_of >= 0)
    test_ic = {}
    for feature_set in ("own", "hybrid"):
        inputs = assemble_inputs(features, store, feature_set, sectors=panel.sectors)
        result = fit_stage3(
            "gru",
            inputs,
            labels,
            split,
            Stage3Spec(
                lookback=5,
                quantiles=None,
                max_epochs=8,
                hparams={"hidden_size": hidden_size, "num_layers": 1},
                batch_size=256,
                lr=3e-3,
                patience=4,
            ),
            TrainerSpec(out_dir=out / feature_set, progress=False),
            stocks=np.flatnonzero(stocks),
        )
        point = predict_stage3(result, inputs, split.test)["point"][:, followers, 0]
        y = labels[:, followers, 0]
        daily = daily_rank_ic(point, y, np.isfinite(point) & np.isfinite(y))[split.test]
        test_ic[feature_set] = np.nanmean(daily)
    return test_ic


def test_a_rawconcat_model_of_the_old_layout_is_refused_for_retraining(tmp_path):
    """A rawconcat GRU saved before the every-stock projection reads x of another width:
    loading it is a RunFolderError (which `relcast stage3` answers by retraining)."""
    from relcast.models.temporal.registry import create_model
    from relcast.runfolder.base import RunFolderError
    from relcast.runfolder.formats import load_stage3, save_module

    old = create_model("gru", num_features=12, horizons=1, hidden_size=8)
    path = tmp_path / "stage3" / "stage3_rawconcat_gru" / "model.safetensors"
    save_module(path, old, asdict(old.config), "gru")
    with pytest.raises(RunFolderError, match="retrain"):
        load_stage3(path)
    same = tmp_path / "stage3" / "stage3_own_gru" / "model.safetensors"
    save_module(same, old, asdict(old.config), "gru")
    assert load_stage3(same).config.num_features == 12  # other models load as before
