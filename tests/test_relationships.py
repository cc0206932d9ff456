"""The out-of-fold relationship store: no training-span date gets features from a Stage1
that trained on its label, and the Parquet store round-trips."""

import numpy as np
import pytest
import torch

from relcast.models.cross_sectional import CrossSectionalTransformer, Stage1Config
from relcast.models.extractors import EmbeddingExtractor
from relcast.relationships.folds import (
    best_epoch_count,
    label_dates_used,
    procrustes_rotation,
    purged_folds,
)
from relcast.relationships.store import (
    RelationshipStore,
    Stage1Fit,
    StorePlan,
    build_relationship_store,
    make_extractor,
)
from relcast.training.specs import Stage1Spec, TrainerSpec

H = 3


@pytest.fixture(scope="module")
def market(make_market):
    m = make_market(8, 300, seed=5, horizons=H)
    panel, split, features, labels = m.panel, m.split, m.features, m.labels
    config = Stage1Config(
        num_features=features.values.shape[2],
        num_stocks=len(panel.symbols),
        horizons=H,
        d_model=16,
        num_heads=2,
        num_layers=1,
        relationship_dim=4,
        dropout=0.0,
    )
    return dict(panel=panel, split=split, features=features, labels=labels, config=config)


class _Result:
    def __init__(self, model):
        self.model, self.train_seconds, self.best_val_rank_ic = model, 0.0, float("nan")


@pytest.fixture
def fake_stage1(monkeypatch):
    """Replace Stage1 training by a seeded untrained model; record what each model trained on."""
    from relcast.training import stage1

    trained = _Trained()  # (model, train_index)

    def fake_fit(features, labels, split, config, spec, trainer, **kw):
        fake_fit.kwargs.append(spec)
        torch.manual_seed(len(trained))
        model = CrossSectionalTransformer(config).eval()
        with torch.no_grad():
            model.stock_embedding.weight.normal_()
        trained.append((model, np.asarray(split.train)))
        return _Result(model)

    fake_fit.kwargs = []  # the training spec of each model, in training order
    monkeypatch.setattr(stage1, "fit_stage1", fake_fit)
    trained.fit_kwargs = fake_fit.kwargs
    return trained


class _Trained(list):
    fit_kwargs: list


class RecordingPCA(EmbeddingExtractor):
    """V2-PCA that records which labels its fit could see."""

    seen_labels: list = []

    def fit(self, model, features, labels, split, **kw):
        RecordingPCA.seen_labels.append((model, np.isfinite(labels).any(axis=(1, 2))))
        return super().fit(model, features, labels, split, **kw)


def _leaks(store, trained, features, train_dates, T):
    """Training dates whose stored features come from a model that used their label.

    Which model produced a date is recomputed (re-running every recorded model and matching
    its output to the store), not read from the store's own bookkeeping.
    """
    train_dates = train_dates[features.mask[train_dates].any(1)]  # skip warm-up dates
    stored = store.values[train_dates]
    leaks = []
    for model, train_index in trained:
        out = EmbeddingExtractor("bottleneck").extract(model, features, train_dates)
        m = out.mask
        produced = np.array(
            [np.allclose(out.values[k][m[k]], stored[k][m[k]], atol=1e-5) for k in range(len(m))]
        )
        used = label_dates_used(train_index, H, T)
        leaks += list(train_dates[produced & used[train_dates]])
    return leaks, len(train_dates)


@pytest.mark.parametrize(("oof", "fold_epochs"), [(True, None), (True, 2), (False, None)])
def test_no_training_row_comes_from_a_model_that_saw_its_label(
    market, fake_stage1, oof, fold_epochs
):
    f, labels, split = market["features"], market["labels"], market["split"]
    T = len(f.dates)
    store = build_relationship_store(
        f,
        labels,
        split,
        EmbeddingExtractor("bottleneck"),
        Stage1Fit(
            config=market["config"],
            spec=Stage1Spec(max_epochs=7, patience=3),
            trainer=TrainerSpec(),
        ),
        StorePlan(n_folds=3, oof=oof, align=False, fold_epochs=fold_epochs),
    )
    assert store.values.shape == (T, len(f.symbols), 4)
    assert len(fake_stage1) == (4 if oof else 1)
    leaks, checked = _leaks(store, fake_stage1, f, np.asarray(split.train), T)
    if oof:
        assert leaks == []
        # every training date is out of fold; every other date comes from the full model
        in_train = np.isin(np.arange(T), split.train)
        assert (store.fold_of[in_train] >= 0).all() and (store.fold_of[~in_train] == -1).all()
        assert sorted(np.unique(store.fold_of[in_train])) == [0, 1, 2]
        # folds are contiguous and time-ordered
        assert (np.diff(store.fold_of[split.train]) >= 0).all()
    else:
        assert len(leaks) == checked  # the check can fail: the leaky store fails it


def test_fold_epochs_fix_the_fold_models_epochs_only(market, fake_stage1):
    """fold_epochs: fold models train that many epochs and validate once, at the end; the
    full model keeps early stopping."""
    f, labels, split = market["features"], market["labels"], market["split"]
    build_relationship_store(
        f,
        labels,
        split,
        EmbeddingExtractor("bottleneck"),
        Stage1Fit(
            config=market["config"],
            spec=Stage1Spec(max_epochs=9, patience=3),
            trainer=TrainerSpec(),
        ),
        StorePlan(n_folds=2, fold_epochs=4),
    )
    full, *folds = fake_stage1.fit_kwargs  # the full model is trained first
    assert (full.max_epochs, full.patience) == (9, 3)
    assert full.validate_every == 1
    assert len(folds) == 2
    for kw in folds:
        assert (kw.max_epochs, kw.validate_every) == (4, 4)
        assert kw.patience > 4  # early stopping cannot end it first
    with pytest.raises(ValueError, match="fold_epochs"):
        build_relationship_store(
            f,
            labels,
            split,
            EmbeddingExtractor("bottleneck"),
            Stage1Fit(config=market["config"], spec=Stage1Spec(), trainer=TrainerSpec()),
            StorePlan(fold_epochs=0),
        )


def test_best_epoch_count_matches_the_checkpoint_rule():
    history = [{"val_rank_ic": v} for v in (0.1, 0.3, float("nan"), 0.3, 0.2)]
    assert best_epoch_count(history) == 2  # the first best, as ModelCheckpoint keeps it
    assert best_epoch_count([{"train_loss": 1.0}]) == 0  # never validated


def test_fold_extractors_see_only_their_models_labels(market, fake_stage1):
    f, labels, split = market["features"], market["labels"], market["split"]
    RecordingPCA.seen_labels = []
    store = build_relationship_store(
        f,
        labels,
        split,
        RecordingPCA("pca", n_components=3),
        Stage1Fit(config=market["config"], spec=Stage1Spec(), trainer=TrainerSpec()),
        StorePlan(n_folds=2),
    )
    assert store.names == ["rel_emb_0", "rel_emb_1", "rel_emb_2"]
    assert len(RecordingPCA.seen_labels) == 3
    for (model, train_index), (seen_model, seen) in zip(
        fake_stage1, RecordingPCA.seen_labels, strict=True
    ):
        assert seen_model is model
        assert not seen[np.setdiff1d(np.arange(len(f.dates)), train_index)].any()


def test_purged_folds_embargo():
    train = np.arange(100)
    folds = purged_folds(train, 3, embargo=5)
    np.testing.assert_array_equal(np.concatenate([fold for _, fold in folds]), train)
    for fit, fold in folds:
        gap = np.abs(fit[:, None] - fold[None, :]).min()
        assert gap == 6  # 5 dates purged on each side
        assert not label_dates_used(fit, 5, 100)[fold].any()
    with pytest.raises(ValueError):
        purged_folds(train, 1, 5)


def test_procrustes_recovers_a_rotation():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 4))
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    r = procrustes_rotation(a, a @ q + 0.01 * rng.standard_normal((200, 4)))
    np.testing.assert_allclose(r, q, atol=0.01)


def test_real_stage1_store_and_parquet_round_trip(market, tmp_path):
    f, labels, split = market["features"], market["labels"], market["split"]
    store = build_relationship_store(
        f,
        labels,
        split,
        make_extractor("v2", method="pca", n_components=3),
        Stage1Fit(
            config=market["config"],
            spec=Stage1Spec(max_epochs=2),
            trainer=TrainerSpec(out_dir=tmp_path / "runs", progress=False),
            target=~market["panel"].is_index,
        ),
        StorePlan(n_folds=2, table_path=tmp_path / "rel.parquet", fold_epochs=1),
    )
    assert len(store.models) == 3 and store.build_seconds > 0
    assert [rec["epochs"] for rec in store.models[:-1]] == [1, 1]  # fold models: fold_epochs
    assert all(np.isfinite(rec["best_val_rank_ic"]) for rec in store.models[:-1])
    for rec in store.models[:-1]:  # fold models: disjoint label windows
        assert not label_dates_used(rec["train_index"], H, len(f.dates))[
            rec["extracted_index"]
        ].any()
    assert np.isfinite(store.values[store.mask]).all()
    assert not list((tmp_path).glob(".rel.parquet.*"))  # no temporary file left behind

    frame = store.to_frame()
    assert len(frame) == store.mask.sum()
    assert {"date", "symbol", "fold"} <= set(frame.columns)
    assert set(f.groups["own"] + f.groups["calendar"] + store.names) <= set(frame.columns)
    back = RelationshipStore.read_parquet(tmp_path / "rel.parquet")
    rows = store.mask.any(1)
    np.testing.assert_array_equal(back.dates, f.dates[rows])
    np.testing.assert_array_equal(back.mask, store.mask[rows])
    np.testing.assert_allclose(back.values[back.mask], store.values[store.mask])
    np.testing.assert_array_equal(back.fold_of, store.fold_of[rows])


def test_full_model_can_be_reused(market, fake_stage1):
    f, labels, split = market["features"], market["labels"], market["split"]
    torch.manual_seed(99)
    full = CrossSectionalTransformer(market["config"]).eval()
    store = build_relationship_store(
        f,
        labels,
        split,
        EmbeddingExtractor("bottleneck"),
        Stage1Fit(config=market["config"], spec=Stage1Spec(), trainer=TrainerSpec()),
        StorePlan(n_folds=2),
        full_model=full,
    )
    assert len(fake_stage1) == 2  # only the fold models were trained
    assert store.full_model is full
    test = np.asarray(split.test)
    ref = EmbeddingExtractor("bottleneck").extract(full, f, test)
    np.testing.assert_allclose(store.values[test][ref.mask], ref.values[ref.mask], atol=1e-6)
