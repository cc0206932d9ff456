"""Evaluation over the scoring window (first..last test date): every piece that no longer
builds a forecast of every date gives exactly what the whole-``T`` computation gave."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import relcast.features.factors as factors
import relcast.training.baselines as baselines
from relcast.evaluation.frames import (
    PredictionRows,
    backtest_table,
    prediction_columns,
    prediction_frames,
    prediction_table,
    write_frames,
)
from relcast.evaluation.scoring import (
    ScoreSettings,
    Spread,
    benchmark_returns,
    score,
    scored_span,
    scoring_window,
    seed_ensemble,
)
from relcast.features.factors import FACTORS, momentum
from relcast.run.steps.evaluate import zscored_h1
from relcast.runfolder import jsonable
from relcast.training.baselines import sample_rows, sampled_cells


def _split(T: int, embargo: int = 2):
    a, b = int(T * 0.6), int(T * 0.8)
    return SimpleNamespace(
        train=np.arange(0, a),
        valid=np.arange(a + embargo, b),
        test=np.arange(b + embargo, T - 3),  # the last dates are not tested: a window inside
        embargo=embargo,
        dates=np.arange(T).astype("datetime64[D]"),
    )


@pytest.fixture()
def market():
    rng = np.random.default_rng(4)
    T, N, H = 120, 9, 2
    labels = rng.normal(0, 0.02, (T, N, H)).astype(np.float32)
    labels[-H:] = np.nan  # no label at the end, as for real forward returns
    mask = rng.random((T, N)) > 0.15
    mask[:, 0] = False  # an index column
    labels[:, 1:][rng.random((T, N - 1, H)) < 0.05] = np.nan  # the index's stay defined
    pred = {
        "naive_zero": np.zeros((T, N, H), np.float32),
        "lightgbm": rng.normal(size=(T, N, H)),
        "hybrid_gru": (labels * 30 + rng.normal(size=(T, N, H))).astype(np.float32),
        "stage3_own_gru": rng.normal(size=(T, N, H)).astype(np.float32),
    }
    quant = np.sort(rng.normal(size=(T, N, H, 3)), axis=-1).astype(np.float32)
    first = pred["hybrid_gru"]
    seeds = [first, first + rng.normal(size=(T, N, H)).astype(np.float32)]
    pred["hybrid_gru"] = seed_ensemble(seeds)  # a seeded model's reported forecast
    return SimpleNamespace(labels=labels, mask=mask, pred=pred, quant=quant, seeds=seeds)


def _json(obj) -> str:
    """metrics.json's text (what evaluate saves): NaN == NaN, arrays as lists."""
    return json.dumps(jsonable(obj), sort_keys=True)


def test_score_on_the_window_equals_score_on_every_date(market):
    m, split = market, _split(len(market.labels))
    settings = ScoreSettings(topk=2, n_drop=1)
    bench = benchmark_returns(m.labels[..., 0], m.mask, np.eye(9, dtype=bool)[0])
    full = score(
        m.pred, m.labels, m.mask, split, settings,
        spread=Spread({"hybrid_gru": m.quant}, {"hybrid_gru": m.seeds}), benchmark=bench,
    )  # fmt: skip
    w = scoring_window(split)
    assert (w.start, w.stop) == (split.test[0], split.test[-1] + 1)
    cut = score(
        {k: v[w] for k, v in m.pred.items()}, m.labels[w], m.mask[w], split, settings,
        spread=Spread({"hybrid_gru": m.quant[w]}, {"hybrid_gru": [s[w] for s in m.seeds]}),
        benchmark=bench[w], start=w.start,
    )  # fmt: skip
    assert _json(cut) == _json(full)
    assert full["models"]["hybrid_gru"]["rank_ic"] > 0.2  # a real signal was scored

    # the saved tables: the same rows from the window's arrays
    span, span_w = (
        scored_span(m.labels, m.mask, split),
        scored_span(m.labels[w], m.mask[w], split, w.start),
    )
    np.testing.assert_array_equal(span_w.days + w.start, span.days)
    dates, symbols = split.dates, np.array([f"S{i}" for i in range(9)], dtype=object)
    for name, pred in m.pred.items():
        q = m.quant if name == "hybrid_gru" else None
        rows = PredictionRows(m.labels, span, dates, symbols, (0.1, 0.5, 0.9))
        rows_w = PredictionRows(m.labels[w], span_w, dates[w], symbols, (0.1, 0.5, 0.9))
        a = prediction_table(name, pred, q, rows)
        b = prediction_table(name, pred[w], None if q is None else q[w], rows_w)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        pd.testing.assert_frame_equal(
            backtest_table(name, pred, m.labels, span, bench, dates, settings),
            backtest_table(name, pred[w], m.labels[w], span_w, bench[w], dates[w], settings),
            check_exact=True,
        )
    # a window that misses a test date is refused, not scored on fewer dates
    with pytest.raises(ValueError, match="not all inside"):
        scored_span(
            m.labels[w.start + 1 : w.stop], m.mask[w.start + 1 : w.stop], split, w.start + 1
        )


def test_predictions_written_in_pieces_read_back_as_one_table(market, tmp_path):
    m, split = market, _split(len(market.labels))
    span = scored_span(m.labels, m.mask, split)
    dates, symbols = split.dates, np.array([f"S{i}" for i in range(9)], dtype=object)
    levels = (0.1, 0.5, 0.9)
    tables, pieces = [], []
    for name, pred in m.pred.items():  # naive_zero first: no quantile columns in its rows
        q = m.quant if name == "hybrid_gru" else None
        rows = PredictionRows(m.labels, span, dates, symbols, levels)
        tables.append(prediction_table(name, pred, q, rows))
        pieces += list(prediction_frames(name, pred, q, rows, 37))
    assert len(pieces) > 4 * 2  # several pieces per model and horizon
    whole = pd.concat(tables, ignore_index=True)
    once, parts = tmp_path / "once.parquet", tmp_path / "parts.parquet"
    whole.to_parquet(once, index=False)
    write_frames(parts, iter(pieces), prediction_columns(levels))
    pd.testing.assert_frame_equal(pd.read_parquet(parts), pd.read_parquet(once), check_exact=True)
    assert whole["q0.1"].isna().any() and whole["q0.1"].notna().any()


def test_momentum_of_a_window_equals_momentum_of_every_date(monkeypatch):
    rng = np.random.default_rng(1)
    T, N = 300, 5
    close = np.exp(np.cumsum(rng.normal(0, 0.01, (T, N)), axis=0)).astype(np.float32)
    mask = rng.random((T, N)) > 0.2
    mask[40:200, 1] = False  # a long suspension: its price is carried over many blocks
    mask[:150, 2] = False  # listed late: NaN until then
    mask[:, 3] = False  # never traded
    monkeypatch.setattr(factors, "BLOCK_CELLS", 7 * N)  # blocks of 7 dates
    whole = momentum(close, mask, 20)
    for lo, hi in [(0, T), (5, 60), (180, 260), (250, T), (19, 21)]:
        np.testing.assert_array_equal(momentum(close, mask, 20, slice(lo, hi)), whole[lo:hi])
    assert np.isfinite(whole[190:, 1]).all() and np.isnan(whole[:170, 2]).all()


@pytest.mark.parametrize("cap", [10**9, 300, 7])
def test_sampled_cells_equal_sampling_every_cell(cap, monkeypatch):
    rng = np.random.default_rng(2)
    T, N = 200, 6
    mask = rng.random((T, N)) > 0.3
    y = rng.normal(size=(T, N)).astype(np.float32)
    y[rng.random((T, N)) < 0.1] = np.nan
    index = rng.permutation(np.arange(30, 170))  # any order: cells come in date order
    monkeypatch.setattr(baselines, "BLOCK_CELLS", 11 * N)
    sub = np.zeros_like(mask)
    sub[index] = mask[index]
    want = sample_rows(np.nonzero(sub & np.isfinite(y)), cap, seed=5)
    got = sampled_cells(mask, y, index, cap, seed=5)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(got[0]) == min(cap, int(sub.__and__(np.isfinite(y)).sum()))


def test_horizon1_zscores_by_blocks_equal_the_whole(market, monkeypatch):
    import relcast.run.steps.evaluate as run_evaluation
    from relcast.features.labels import normalize_labels_cross_section

    monkeypatch.setattr(run_evaluation, "BLOCK_CELLS", 13 * 9)
    want = normalize_labels_cross_section(market.labels, market.mask)[..., 0]
    np.testing.assert_array_equal(zscored_h1(market.labels, market.mask), want)


def test_window_baselines_allocate_with_the_window_not_every_date(monkeypatch):
    """On a long market, the naive baselines of a short window allocate in proportion to the
    window (and a block of dates), not to all T dates (tracemalloc, numpy's allocations)."""
    import tracemalloc

    import relcast.features.indicators  # noqa: F401  (imported before tracing: its objects)

    rng = np.random.default_rng(3)
    T, N, H = 40_000, 20, 2
    values = np.exp(np.cumsum(rng.normal(0, 0.01, (T, N)), axis=0)).astype(np.float32)
    panel = SimpleNamespace(field=lambda name: values, mask=rng.random((T, N)) > 0.1)
    features = SimpleNamespace(values=np.zeros((T, N, 1), np.float32))
    monkeypatch.setattr(factors, "BLOCK_CELLS", 500 * N)
    settings = SimpleNamespace(lightgbm=False)  # every factor, at its default window
    window = slice(T - 600, T - 100)
    tracemalloc.start()
    try:
        out = baselines.baseline_predictions(
            panel, features, baselines.LightgbmFit(None, None, None), H, settings, dates=window
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert {k: v.shape for k, v in out.items()} == {
        name: (500, N, H) for name in ("naive_zero", *FACTORS)
    }  # fmt: skip
    whole = momentum(values, panel.mask, 20)
    np.testing.assert_array_equal(out["momentum_20d"][..., 1], whole[window])
    one_float_per_cell = T * N * 4  # a single float32 [T, N]: 3.2 MB
    assert peak < one_float_per_cell / 4, peak
