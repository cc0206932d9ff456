"""`data.store: memmap`: the run folder's memory-mapped feature store is what every step reads,
and the run's predictions equal the in-memory run's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import relcast.data.synthetic
import relcast.features.build
import relcast.relationships.blocks
import relcast.relationships.store
from relcast.config import load_config
from relcast.data.panel import Panel
from relcast.data.synthetic import synthetic_market
from relcast.features.build import build_features
from relcast.features.chunked import ChunkedFeatures
from relcast.run.runner import Pipeline
from relcast.store.run_store import FEATURE_STORE, PANEL_SCRATCH
from relcast.store.sources import write_panel_parquet
from relcast.training.baselines import lightgbm_scores, sample_rows, shuffle_within_dates
from relcast.training.stage3_inputs import StockMajorInputs

SETS = [
    "data.source=synthetic", "data.synthetic_stocks=6", "data.synthetic_days=262",
    "data.horizons=2", "stage1.d_model=16", "stage1.num_heads=2", "stage1.num_layers=1",
    "stage1.relationship_dim=4", "stage1.max_epochs=1", "stage1.batch_dates=16",
    "stage2.n_estimators=20", "relationships.oof_folds=2", "stage3.models=[gru]",
    "stage3.feature_sets=[hybrid,own]", "stage3.hidden_size=8", "stage3.lookback=8",
    "stage3.max_epochs=1", "stage3.batch_size=256", "evaluation.topk=2",
    "trainer.progress=false", "trainer.accelerator=cpu",
]  # fmt: skip


def _memmapped(array: np.ndarray) -> bool:
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base
    return False


def _no_full_features(*args, **kwargs):
    raise AssertionError("a memmap run built the whole [T, N, F] feature array in memory")


def _no_full_market(*args, **kwargs):
    raise AssertionError("a memmap run drew the whole synthetic market in memory")


EXTRACTED: dict[str, list] = {"memory": [], "memmap": []}
"""Dates of every block the extraction produced, per run (``runs`` fills it)."""


def _recording_blocks(store: str):
    blocks = relcast.relationships.blocks.extract_blocks

    def record(extractor, model, features, index, block_bytes=None):
        for chunk, rel in blocks(extractor, model, features, index, block_bytes):
            EXTRACTED[store].append(rel.values.shape)  # (t, N, K) handed on
            yield chunk, rel

    return record


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("memmap_run")
    out = {}
    for store in ("memory", "memmap"):
        config = load_config(None, None, [*SETS, f"data.store={store}"], {})
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(relcast.relationships.store, "extract_blocks", _recording_blocks(store))
            if store == "memmap":  # every step: features come from the store, block by block
                patch.setattr(relcast.features.build, "build_features", _no_full_features)
                # the market is written to a file by blocks, never drawn whole in memory
                patch.setattr(relcast.data.synthetic, "synthetic_market", _no_full_market)
                # blocks of ~20 dates (6 stocks + index, 4 + 1 relationship columns) for the
                # extraction and of ~3 dates for the Parquet frame (~ 7 x 50 values a date)
                patch.setattr(
                    relcast.relationships.store, "BLOCK_BYTES", 20 * 7 * 4 * (5 + 44 + 64)
                )
                patch.setattr(relcast.relationships.blocks, "BLOCK_BYTES", 3 * 7 * 50 * 4)
            Pipeline(config, root / store).run()
        out[store] = root / store
    return out


def test_memmap_store_is_what_the_steps_read(runs):
    assert not (runs["memory"] / FEATURE_STORE).exists()
    assert (runs["memmap"] / FEATURE_STORE / "meta.json").exists()
    pipe = Pipeline.open(runs["memmap"])
    assert _memmapped(pipe.ctx.features.values) and _memmapped(pipe.ctx.labels)
    memory = Pipeline.open(runs["memory"])
    assert not _memmapped(memory.ctx.features.values)
    # the store holds the run's features (NaN where masked) and labels, not an approximation
    ok = memory.ctx.features.mask
    np.testing.assert_array_equal(pipe.ctx.features.mask, ok)
    np.testing.assert_array_equal(pipe.ctx.features.values[ok], memory.ctx.features.values[ok])
    np.testing.assert_array_equal(pipe.ctx.labels, memory.ctx.labels)


def test_memmap_run_predicts_as_the_in_memory_run(runs):
    keys = ["date", "symbol", "model", "horizon"]
    a = pd.read_parquet(runs["memory"] / "predictions.parquet").sort_values(keys)
    b = pd.read_parquet(runs["memmap"] / "predictions.parquet").sort_values(keys)
    assert len(a) == len(b) > 0 and set(a["model"]) >= {"stage1", "hybrid_gru", "stage3_own_gru"}
    assert (a[keys].to_numpy() == b[keys].to_numpy()).all()
    np.testing.assert_allclose(b["pred"].to_numpy(), a["pred"].to_numpy(), rtol=0, atol=1e-6)


def test_memmap_run_keeps_panel_and_stage3_inputs_in_the_store(runs):
    """Nothing [T, N, F]-sized is handed to Stage3 from memory: own inputs are the store's
    file, hybrid inputs a memory map; both equal what the in-memory run assembles."""
    pipe, memory = Pipeline.open(runs["memmap"]), Pipeline.open(runs["memory"])
    assert _memmapped(pipe.ctx.panel.values)
    assert not (runs["memmap"] / PANEL_SCRATCH).exists()  # moved into the store
    # Stage1 reads whole cross-sections: from the time-major file, one block per date
    assert pipe.ctx.features.values is pipe.ctx.store.maps.values_by_date
    assert pipe.ctx.features.values.flags.c_contiguous
    np.testing.assert_array_equal(pipe.ctx.panel.values, memory.ctx.panel.values)
    np.testing.assert_array_equal(pipe.ctx.panel.mask, memory.ctx.panel.mask)
    assert list(pipe.ctx.panel.meta.columns) == list(memory.ctx.panel.meta.columns)
    assert (pipe.ctx.panel.meta.to_numpy() == memory.ctx.panel.meta.to_numpy()).all()
    for feature_set in ("own", "hybrid"):
        got, want = pipe.ctx.stage3_inputs(feature_set), memory.ctx.stage3_inputs(feature_set)
        assert isinstance(got, StockMajorInputs) and isinstance(got.by_stock, np.memmap)
        assert _memmapped(got.values) and not isinstance(want, StockMajorInputs)
        assert got.names == want.names and got.groups == want.groups
        np.testing.assert_array_equal(got.valid, want.valid)
        np.testing.assert_array_equal(got.sector_ids, want.sector_ids)
        np.testing.assert_array_equal(got.values[want.valid], want.values[want.valid])
        a = next(iter(got.loader(8, batch_size=64)))
        b = next(iter(want.loader(8, batch_size=64)))
        for key in ("x", "t", "n", "sector_id"):  # the loader gathers the same windows
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    assert pipe.ctx.stage3_inputs("hybrid") is pipe.ctx.stage3_inputs("hybrid")  # built once
    # evaluation predicts Stage1 on the scoring window's dates only and, without Stage2,
    # keeps only `pred`
    from relcast.evaluation.scoring import scoring_window
    from relcast.run.steps.evaluate import stage1_window_outputs

    window = scoring_window(pipe.ctx.split)
    assert window.start > 0
    blocks = stage1_window_outputs(pipe.ctx, window, booster=False)
    assert list(blocks) == ["pred"]
    want = memory.ctx.stage1_outputs["pred"][window]
    np.testing.assert_allclose(blocks["pred"], want, atol=1e-6)
    both = stage1_window_outputs(pipe.ctx, window, booster=True)
    assert both["embeddings"].shape[0] == want.shape[0]
    np.testing.assert_array_equal(both["pred"], blocks["pred"])


def test_memmap_run_extracts_relationships_by_date_blocks(runs):
    """data.store=memmap: the relationship values [T, N, K] are written a block of dates at a
    time into a map in the run folder (never whole in memory), later steps read that map, and
    values and data_with_relationships.parquet equal the in-memory run's."""
    import pyarrow.parquet as pq

    pipe, memory = Pipeline.open(runs["memmap"]), Pipeline.open(runs["memory"])
    (got, names), (want, want_names) = pipe.ctx.relationships, memory.ctx.relationships
    T = pipe.ctx.features.mask.shape[0]
    assert names == want_names and got.shape == want.shape and got.shape[0] == T
    assert _memmapped(got) and not _memmapped(want)
    assert (runs["memmap"] / "relationships_values.npy").exists()
    assert not (runs["memory"] / "relationships_values.npy").exists()
    with np.load(runs["memmap"] / "relationships.npz") as z:
        assert "values" not in z.files  # the archive holds no copy of the map
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # NaN where masked, both
    stored, kept = pipe.ctx.folder.load_relationships(), memory.ctx.folder.load_relationships()
    for key in ("mask", "fold_of", "dates"):
        np.testing.assert_array_equal(stored[key], kept[key])
    assert set(stored["fold_of"]) == {-1, 0, 1}  # out-of-fold dates went through the blocks
    # in memory every extraction is one block (the full model's: every date outside the
    # training span, whose values the fold models give); with the map, blocks of a few dates
    outside = T - len(memory.ctx.split.train)
    assert outside in [shape[0] for shape in EXTRACTED["memory"]]
    assert 0 < max(shape[0] for shape in EXTRACTED["memmap"]) < T / 4
    assert len(EXTRACTED["memmap"]) > 8
    # the frame, written block by block, reads back as the in-memory run's
    path = runs["memmap"] / "data_with_relationships.parquet"
    assert pq.ParquetFile(path).metadata.num_row_groups > 10
    a = pd.read_parquet(runs["memory"] / "data_with_relationships.parquet")
    b = pd.read_parquet(path)
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    assert (
        a[["date", "symbol", "fold"]].to_numpy() == b[["date", "symbol", "fold"]].to_numpy()
    ).all()
    np.testing.assert_allclose(b[names].to_numpy(), a[names].to_numpy(), rtol=0, atol=1e-6)
    own = [c for c in a.columns if c not in (*names, "date", "symbol", "fold")]
    np.testing.assert_array_equal(b[own].to_numpy(), a[own].to_numpy())


def _scored_on_every_date(pipe) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """metrics, predictions and backtest as evaluate built them before it kept the scoring
    window only: every model's forecast of every date ``[T, N, H]``, scored over all of them."""
    from relcast.evaluation.frames import PredictionRows, backtest_table, prediction_table
    from relcast.evaluation.scoring import (
        ScoreSettings,
        Spread,
        benchmark_returns,
        score,
        scored_span,
    )
    from relcast.training.baselines import LightgbmFit, baseline_predictions
    from relcast.training.stage3 import predict_stage3

    cfg, f, split, panel = pipe.config, pipe.ctx.features, pipe.ctx.split, pipe.ctx.panel
    labels = np.asarray(pipe.ctx.labels)
    cell = f.mask & pipe.ctx.target[None, :]
    span, H = scored_span(labels, cell, split), labels.shape[2]
    point = baseline_predictions(
        panel, f, LightgbmFit(span.z[..., 0], cell, split, cfg.trainer.seed), H, cfg.baselines
    )
    s1 = pipe.ctx.stage1_outputs
    point["stage1"] = np.pad(s1["pred"], ((0, 0), (0, 0), (0, H - s1["pred"].shape[2])), "edge")
    corrected = pipe.ctx.stage2_booster.predict(
        np.nan_to_num(f.values), s1["embeddings"], s1["pred"][..., 0], f.mask
    )
    point["stage1+stage2"] = point["stage1"].copy()
    point["stage1+stage2"][..., 0] = corrected
    quantiles = {}
    for name, _, feature_set in pipe.ctx.stage3_names():
        out = predict_stage3(
            pipe.ctx.stage3_model(name)[0], pipe.ctx.stage3_inputs(feature_set), split.test
        )
        point[name], quantiles[name] = out["point"], out["pred"]
    settings = ScoreSettings.from_config(cfg)
    bench = benchmark_returns(labels[..., 0], panel.mask, panel.is_index)
    metrics = score(point, labels, cell, split, settings, spread=Spread(quantiles), benchmark=bench)
    dates, symbols, levels = panel.dates, panel.symbols, settings.quantiles
    rows = PredictionRows(labels, span, dates, symbols, levels)
    predictions = pd.concat(
        [prediction_table(n, p, quantiles.get(n), rows) for n, p in point.items()],
        ignore_index=True,
    )
    backtest = pd.concat(
        [
            backtest_table(n, p, labels, span, bench, dates, settings)
            for n, p in point.items()
            if n != "naive_zero"
        ],
        ignore_index=True,
    )
    return metrics, predictions, backtest


@pytest.mark.parametrize("store", ["memory", "memmap"])
def test_evaluate_keeps_the_scoring_window_and_scores_as_every_date(runs, store, monkeypatch):
    """evaluate hands score() forecasts of the scoring window's dates only ([W, N, H], W < T,
    in both stores), and metrics.json, predictions.parquet and backtest.parquet are exactly
    those of scoring every date's forecasts (the computation evaluate did before)."""
    import json

    import relcast.run.steps.evaluate as run_evaluation
    from relcast.evaluation.scoring import scoring_window
    from relcast.runfolder import jsonable

    pipe = Pipeline.open(runs[store])
    T, window = pipe.ctx.features.mask.shape[0], scoring_window(pipe.ctx.split)
    W = window.stop - window.start
    assert W < T / 4
    real_score, shapes = run_evaluation.score, []

    def recording(predictions, labels, mask, split, settings, **kw):
        shapes.extend(a.shape[0] for a in (labels, mask, *predictions.values()))
        shapes.extend(a.shape[0] for a in kw["spread"].quantiles.values())
        assert kw["start"] == window.start
        return real_score(predictions, labels, mask, split, settings, **kw)

    monkeypatch.setattr(run_evaluation, "score", recording)
    pipe.step("evaluate")  # again, over the files the run wrote: the same values
    assert len(shapes) > 10 and set(shapes) == {W}

    want, predictions, backtest = _scored_on_every_date(Pipeline.open(runs[store]))
    got = json.loads((runs[store] / "metrics.json").read_text())
    for row in got["models"].values():  # run.json's timings, added to the Stage3 rows
        for key in run_evaluation.TIMINGS:
            row.pop(key, None)
    assert json.dumps(got, sort_keys=True) == json.dumps(jsonable(want), sort_keys=True)
    assert {"stage1+stage2", "hybrid_gru", "lightgbm"} <= set(got["models"])
    saved = pd.read_parquet(runs[store] / "predictions.parquet")
    pd.testing.assert_frame_equal(saved, predictions, check_exact=True)
    saved = pd.read_parquet(runs[store] / "backtest.parquet")
    pd.testing.assert_frame_equal(saved, backtest, check_exact=True)


def test_panel_after_update_is_read_from_parquet(runs, tmp_path):
    """`relcast update` appends dates to panel.parquet, not to the store's panel map: a run
    whose Parquet panel has more dates reads it, never the stale map."""
    import shutil

    run = shutil.copytree(runs["memmap"], tmp_path / "run")
    old = Pipeline.open(run).ctx.panel
    extra = Panel(
        dates=np.concatenate([old.dates, old.dates[-1:] + np.timedelta64(1, "D")]),
        symbols=old.symbols, fields=old.fields,
        values=np.concatenate([old.values, old.values[-1:]]),
        mask=np.concatenate([old.mask, old.mask[-1:]]), meta=old.meta,
    )  # fmt: skip
    extra.to_parquet(run / "panel.parquet")
    pipe = Pipeline.open(run)
    assert pipe.ctx.panel.num_dates == old.num_dates + 1 and not _memmapped(pipe.ctx.panel.values)
    np.testing.assert_array_equal(pipe.ctx.panel.values[:-1], old.values)


def test_memmap_prepare_reads_a_parquet_market_by_blocks(tmp_path, monkeypatch):
    """``data.store: memmap`` from a long Parquet file: prepare reads it with the block
    reader (never ``read_panel``'s whole table) and the run's panel and features are the
    in-memory run's."""
    import relcast.data.blockread

    market, _ = synthetic_market(num_stocks=6, num_days=262, seed=2, missing_prob=0.02)
    path = market.to_parquet(tmp_path / "bars.parquet")
    sets = [s for s in SETS if not s.startswith("data.s")] + [f"data.source={path}"]
    pipes, calls = {}, []
    read = relcast.data.blockread.read_panel_to_memmap
    monkeypatch.setattr(
        relcast.data.blockread, "read_panel_to_memmap",
        lambda *a, **k: calls.append(k.pop("block_rows", None)) or read(*a, block_rows=500, **k),
    )  # fmt: skip
    for store in ("memory", "memmap"):
        if store == "memmap":
            monkeypatch.setattr(relcast, "read_panel", _no_full_market)
        pipes[store] = Pipeline(load_config(None, None, [*sets, f"data.store={store}"], {}),
                                tmp_path / store)  # fmt: skip
        pipes[store].step("prepare")
    assert calls == [None]  # prepare of the memmap run, in blocks of 500 rows here
    got, want = Pipeline.open(tmp_path / "memmap"), Pipeline.open(tmp_path / "memory")
    assert _memmapped(got.ctx.panel.values)
    np.testing.assert_array_equal(got.ctx.panel.values, want.ctx.panel.values)
    np.testing.assert_array_equal(got.ctx.panel.mask, want.ctx.panel.mask)
    ok = want.ctx.features.mask
    np.testing.assert_array_equal(got.ctx.features.mask, ok)
    np.testing.assert_array_equal(got.ctx.features.values[ok], want.ctx.features.values[ok])
    assert not (tmp_path / "memmap" / PANEL_SCRATCH).exists()


@pytest.fixture(scope="module")
def gappy_market():
    panel, _ = synthetic_market(num_stocks=9, num_days=260, seed=5)
    rng = np.random.default_rng(1)
    mask = panel.mask & (rng.random(panel.mask.shape) > 0.05)
    mask[:50, 2] = False  # a late listing
    values = np.where(mask[..., None], panel.values, np.nan)
    return Panel(panel.dates, panel.symbols, panel.fields, values, mask, panel.meta)


@pytest.mark.parametrize("with_index", [True, False])
@pytest.mark.parametrize("extra", [{}, {"alpha158": True, "regime_window": 20}])
def test_chunked_features_equal_build_features_bit_for_bit(gappy_market, with_index, extra):
    """Raw indicators by symbol block, normalisation by date block: the same float32 values
    and mask as the in-memory builder, with many blocks of both kinds (and the equal-weight
    index, built by date blocks, when the panel has no index)."""
    panel = gappy_market
    if not with_index:
        panel = panel.select(symbols=list(panel.symbols[~panel.is_index]))
    want, fitted = build_features(panel, train_end=150, scalers=(ref := {}), **extra), {}
    chunked = ChunkedFeatures(panel, 150, scalers=fitted, block_bytes=30_000, **extra)
    assert chunked.names == want.names and chunked.groups == want.groups
    scratch = np.full((panel.num_symbols, panel.num_dates, len(want.names)), np.nan, np.float32)
    chunked.write_raw(scratch)
    got, mask, blocks = np.empty_like(want.values), np.empty_like(want.mask), 0
    for a, values, ok in chunked.blocks(scratch):
        got[a : a + len(values)], mask[a : a + len(values)] = values, ok
        blocks += 1
    assert blocks > 3
    np.testing.assert_array_equal(mask, want.mask)
    np.testing.assert_array_equal(got, want.values)
    np.testing.assert_array_equal(fitted["index"][1].mean_, ref["index"][1].mean_)


def test_panel_parquet_written_in_blocks_reads_back_the_same(gappy_market, tmp_path):
    write_panel_parquet(gappy_market, tmp_path / "blocks.parquet", rows_per_group=100)
    gappy_market.to_parquet(tmp_path / "whole.parquet")
    a, b = (
        Panel.read_parquet(tmp_path / "blocks.parquet"),
        Panel.read_parquet(tmp_path / "whole.parquet"),
    )
    np.testing.assert_array_equal(a.dates, b.dates)
    np.testing.assert_array_equal(a.symbols, b.symbols)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.meta.equals(b.meta)


def test_lightgbm_row_cap_samples_and_predicts_every_cell(gappy_market):
    """baselines.max_rows: at most that many training rows, a seeded subset in date order;
    prediction by date blocks equals one prediction over all cells."""
    from types import SimpleNamespace

    from relcast.training.baselines import DEFAULTS

    features = build_features(gappy_market, train_end=150)
    T, N, _ = features.values.shape
    y = np.random.default_rng(0).standard_normal((T, N)).astype(np.float32)
    rows = np.nonzero(features.mask[:150])
    cut = sample_rows(rows, 500, seed=3)
    assert len(cut[0]) == 500 and (np.diff(cut[0] * N + cut[1]) > 0).all()
    assert set(zip(*cut, strict=True)) <= set(zip(*rows, strict=True))
    assert sample_rows(rows, 10**9, seed=3) is rows
    split = SimpleNamespace(train=np.arange(0, 150), valid=np.arange(170, 210))
    small = SimpleNamespace(**{**vars(DEFAULTS), "n_estimators": 5, "max_rows": 3 * N})
    whole = SimpleNamespace(**{**vars(small), "max_rows": 10**9})
    capped = lightgbm_scores(features.values, y, features.mask, split, 0, small)
    assert capped.shape == (T, N) and np.isfinite(capped).all()
    assert not np.allclose(
        capped, lightgbm_scores(features.values, y, features.mask, split, 0, whole)
    )
    # the shuffled control (drawn by date blocks) permutes labels within each date only
    shuffled, ok = shuffle_within_dates(y, features.mask, 7), features.mask
    for t in range(T):
        np.testing.assert_array_equal(np.sort(shuffled[t][ok[t]]), np.sort(y[t][ok[t]]))
    assert np.isnan(shuffled[~ok]).all() and not np.array_equal(shuffled[ok], y[ok])


@pytest.mark.parametrize("label_norm", ["cross_section", "cs_rank"])
def test_stage3_target_normalised_by_date_blocks(label_norm, monkeypatch, tmp_path):
    """Inputs from the store: Stage3's targets are normalised a block of dates at a time
    (never a float64 [T, N, H] over every date) into the store's scratch file, with the values
    of one call over all dates."""
    from numpy.lib.format import open_memmap

    from relcast.training import stage3

    class Store:  # what _target asks of a MemmapFeatureStore
        def scratch(self, name, shape):
            return open_memmap(tmp_path / f"{name}.npy", "w+", np.float32, shape)

    rng = np.random.default_rng(0)
    T, N, H = 97, 11, 2
    labels = rng.standard_normal((T, N, H)).astype(np.float32)
    labels[rng.random((T, N, H)) < 0.1] = np.nan
    labels[5] = 0.25  # a date where every label is equal
    valid = rng.random((T, N)) > 0.2
    want = stage3._target(labels, valid, label_norm)
    seen = []
    norm = {"cross_section": "normalize_labels_cross_section", "cs_rank":
            "rank_normalize_labels_cross_section"}[label_norm]  # fmt: skip
    inner = getattr(stage3, norm)

    def recording(block, mask):
        seen.append(len(block))
        return inner(block, mask)

    monkeypatch.setattr(stage3, norm, recording)
    monkeypatch.setattr(stage3, "TARGET_BLOCK_BYTES", 10 * N * H * 8 * 4)
    got = stage3._target(labels, valid, label_norm, Store())
    assert max(seen) == 10 and sum(seen) == T
    assert _memmapped(got)  # off the heap
    assert got.dtype == np.float32 and got.shape == (T, N, H)
    np.testing.assert_array_equal(got, want)  # NaN in the same places, same floats
    assert np.isfinite(want[valid & np.isfinite(labels).all(-1)]).all()


def test_stage2_row_cap_samples_training_rows(monkeypatch):
    """stage2.max_rows: LightGBM's Stage2 sees at most that many training (and validation)
    rows, a seeded subset in date order; above the row count the fit is the uncapped one."""
    import lightgbm as lgb

    from relcast.models.residual import ResidualBooster, _cap_rows, _rows

    rng = np.random.default_rng(0)
    T, N, F, d = 120, 15, 4, 3
    x = rng.standard_normal((T, N, F)).astype(np.float32)
    emb = rng.standard_normal((T, N, d)).astype(np.float32)
    mask = rng.random((T, N)) > 0.1
    stage1 = 0.5 * x[..., 0]
    y = (stage1 + np.sin(2 * x[..., 1]) + 0.3 * rng.standard_normal((T, N))).astype(np.float32)
    train, valid = np.arange(0, 80), np.arange(90, 120)
    seen, dataset = [], lgb.Dataset

    def recording(data, *args, **kwargs):
        seen.append(np.asarray(data).copy())
        return dataset(data, *args, **kwargs)

    monkeypatch.setattr(lgb, "Dataset", recording)

    def fit(cap):
        seen.clear()
        booster = ResidualBooster(n_estimators=20, n_jobs=1, max_rows=cap)
        return booster.fit(x, emb, stage1, y, mask, train, valid), [s.copy() for s in seen]

    whole, (x_all, _) = fit(None)
    same, (x_same, _) = fit(10**9)
    capped, (x_cap, x_cap_valid) = fit(300)
    assert len(x_all) == mask[train].sum() and x_all.shape[1] == F + d
    np.testing.assert_array_equal(x_same, x_all)
    np.testing.assert_array_equal(
        same.predict(x, emb, stage1, mask), whole.predict(x, emb, stage1, mask)
    )
    assert len(x_cap) == len(x_cap_valid) == 300
    t, n = _cap_rows(*_rows(mask, train), 300, seed=0)
    assert (np.diff(t * N + n) > 0).all() and mask[t, n].all() and (t < 80).all()
    np.testing.assert_array_equal(x_cap, np.concatenate([x[t, n], emb[t, n]], axis=1))
    a, b = capped.predict(x, emb, stage1, mask), whole.predict(x, emb, stage1, mask)
    assert not np.allclose(a[mask], b[mask])


def test_freed_heap_goes_back_to_the_os_between_steps():
    """``return_freed_memory`` (called after every step of ``Pipeline.run``) gives back the
    heap that many small freed arrays leave in RSS (glibc keeps it otherwise). In a fresh
    process: a test worker's heap already holds free memory from earlier tests."""
    import subprocess
    import sys

    script = """
import numpy as np
from relcast.run.pipeline import return_freed_memory

def rss_mib():
    status = open("/proc/self/status").read()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024

before = rss_mib()
parts = [np.ones(1000) for _ in range(40_000)]  # 320 MB of 8 kB arrays: heap, not mmap
keep = [np.ones(10) for _ in range(100)]  # allocated after: the heap cannot just shrink
del parts
held = rss_mib()
return_freed_memory()
print(before, held, rss_mib())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, held, after = map(float, out.stdout.split())
    assert held - before > 250  # the freed arrays were still held
    assert after - before < 0.3 * (held - before), (before, held, after)


def test_evaluate_and_report_after_an_update_of_a_memmap_run(runs, tmp_path):
    """`update` on a ``data.store: memmap`` run, then `evaluate` and `report` (issue #27)."""
    import shutil

    from typer.testing import CliRunner

    from relcast.cli import app

    run = shutil.copytree(runs["memmap"], tmp_path / "run")
    old = Pipeline.open(run).ctx.panel
    days = np.busday_offset(old.dates[-1].astype("datetime64[D]"), np.arange(1, 4), roll="forward")
    dates = days.astype("datetime64[ns]")
    frame = Panel(
        dates=dates, symbols=old.symbols, fields=old.fields,
        values=old.values[-3:] * np.float32(1.01), mask=old.mask[-3:], meta=old.meta,
    ).to_frame()  # fmt: skip
    frame.to_csv(tmp_path / "new.csv", index=False)
    result = CliRunner().invoke(
        app, ["update", "--run", str(run), "--data", str(tmp_path / "new.csv")]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    for command in ("evaluate", "report"):
        result = CliRunner().invoke(app, [command, "--run", str(run)])
        assert result.exit_code == 0, result.output + repr(result.exception)
    assert Pipeline.open(run).ctx.panel.num_dates == old.num_dates + 3
