"""Evaluation without training: score() on planted arrays (relcast.evaluation.scoring)."""

from __future__ import annotations

import numpy as np
import pytest

from relcast.evaluation.scoring import ScoreSettings, Spread, score, scored_span, seed_ensemble
from relcast.features.splits import Split

T, N, H = 120, 30, 2


@pytest.fixture()
def planted():
    rng = np.random.default_rng(0)
    labels = rng.normal(0, 0.02, (T, N, H))
    mask = rng.random((T, N)) > 0.1
    labels[~mask] = np.nan
    dates = np.arange("2020-01-01", T, dtype="datetime64[D]").astype("datetime64[ns]")
    split = Split(
        train=np.arange(0, 60), valid=np.arange(63, 80), test=np.arange(83, T),
        embargo=3, dates=dates,
    )  # fmt: skip
    return labels, mask, split


def _settings():
    return ScoreSettings(topk=5, n_drop=1, quantiles=None)


def test_perfect_forecast_has_rank_ic_one_and_shuffled_near_zero(planted):
    labels, mask, split = planted
    rng = np.random.default_rng(1)
    perfect = scored_span(labels, mask, split).z  # labels z-scored across stocks per date
    shuffled = labels[:, rng.permutation(N), :]  # another stock's label: no information
    metrics = score({"perfect": perfect, "shuffled": shuffled}, labels, mask, split,
                    _settings())  # fmt: skip
    perfect, noise = metrics["models"]["perfect"], metrics["models"]["shuffled"]
    assert perfect["rank_ic"] == pytest.approx(1.0) and perfect["ic"] == pytest.approx(1.0)
    assert perfect["direction_acc"] == pytest.approx(1.0)
    assert perfect["rank_ic_by_horizon"]["h2"] == pytest.approx(1.0)
    # 37 test dates x 27 stocks: the daily rank IC of noise has sd ~ 1/sqrt(26 * 37) ~ 0.03
    assert abs(noise["rank_ic"]) < 0.1
    assert abs(noise["rank_ic_t"]) < 3.5
    assert metrics["test_dates_scored"] == len(split.test)


def test_masked_cells_are_ignored(planted):
    labels, mask, split = planted
    forecast = labels + np.random.default_rng(3).normal(0, 0.02, labels.shape)
    pred = np.where(mask[..., None], forecast, 1e6)  # garbage where the mask is off
    clean = score({"m": np.where(mask[..., None], forecast, 0.0)}, labels, mask, split,
                  _settings())  # fmt: skip
    dirty = score({"m": pred}, labels, mask, split, _settings())
    a, b = clean["models"]["m"], dirty["models"]["m"]
    for key in ("ic", "rank_ic", "mse", "direction_acc", "rank_ic_t"):
        assert a[key] == pytest.approx(b[key]), key
    for key in ("total_return", "information_ratio", "mean_turnover"):
        assert a["backtest"]["topk"][key] == pytest.approx(b["backtest"]["topk"][key]), key


def test_statistics_paired_tests_seeds_and_intervals(planted):
    labels, mask, split = planted
    rng = np.random.default_rng(2)
    good = labels + rng.normal(0, 0.02, labels.shape)
    noise = rng.normal(0, 1, labels.shape)
    q = np.stack([good - 5, good, good + 5], axis=-1)  # very wide: covers every label
    seeds = [good, good + rng.normal(0, 0.01, labels.shape)]
    metrics = score(
        {"lightgbm": noise, "stage3_own_gru": noise, "hybrid_gru": seed_ensemble(seeds)},
        labels, mask, split, ScoreSettings(topk=5, quantiles=(0.1, 0.5, 0.9)),
        spread=Spread({"hybrid_gru": q}, {"hybrid_gru": seeds}),
    )  # fmt: skip
    assert metrics["statistics"]["newey_west_lag"] >= 1
    assert set(metrics["split"]) == {"train", "valid", "test", "embargo"}
    row = metrics["models"]["hybrid_gru"]
    for key in ("ic_t", "ic_p", "rank_ic_t", "rank_ic_p"):
        assert np.isfinite(row[key]), key
    assert row["rank_ic_t"] > 3 and row["rank_ic_p"] < 0.01  # the planted signal is found
    assert row["vs_lightgbm"]["baseline"] == "lightgbm" and row["vs_lightgbm"]["t"] > 3
    assert row["vs_own"]["baseline"] == "stage3_own_gru"
    assert row["vs_own"]["forecasts"] == "seed_average" and row["seeds"]["n"] == 2
    assert row["coverage"] == pytest.approx(1.0) and row["coverage_nominal"] == pytest.approx(0.8)
    assert "vs_lightgbm" not in metrics["models"]["lightgbm"]
    assert set(row["backtest"]) == {"topk", "long_short"}
    lo, hi = row["vs_lightgbm"]["ci95"]  # the bootstrap interval holds the mean difference
    assert lo < row["vs_lightgbm"]["mean_diff"] < hi and lo > 0
    cw = row["vs_own"]["clark_west"]  # the planted signal forecasts better than noise
    assert cw["t"] > 3 and cw["p"] < 0.01


def test_a_seeded_row_scores_the_seeds_ensemble(planted):
    """Several seeds: the row is the mean forecast's (as if it were one model), ``seeds``
    the single seeds' spread; a forecast that is not their mean is refused."""
    labels, mask, split = planted
    rng = np.random.default_rng(4)
    signal = labels + rng.normal(0, 0.02, labels.shape)
    seeds = [signal + rng.normal(0, 0.04, labels.shape) for _ in range(3)]
    ensemble = seed_ensemble(seeds)
    np.testing.assert_allclose(ensemble, np.mean(seeds, axis=0))
    got = score({"hybrid_gru": ensemble}, labels, mask, split, _settings(),
                spread=Spread(seed_runs={"hybrid_gru": seeds}))["models"]["hybrid_gru"]  # fmt: skip
    alone = score({"hybrid_gru": ensemble}, labels, mask, split, _settings())
    singles = [score({"m": r}, labels, mask, split, _settings())["models"]["m"] for r in seeds]
    for key in ("rank_ic", "ic", "mse", "rank_ic_t"):
        assert got[key] == pytest.approx(alone["models"]["hybrid_gru"][key]), key
    assert got["seeds"]["n"] == 3
    ranks = [r["rank_ic"] for r in singles]
    assert got["seeds"]["rank_ic_mean"] == pytest.approx(np.mean(ranks))
    assert got["seeds"]["rank_ic_std"] == pytest.approx(np.std(ranks, ddof=1))
    assert got["rank_ic"] > max(ranks)  # averaging seeds' noise sharpens the forecast
    with pytest.raises(ValueError, match="seeds' mean"):
        score({"hybrid_gru": seeds[0]}, labels, mask, split, _settings(),
              spread=Spread(seed_runs={"hybrid_gru": seeds}))  # fmt: skip


def test_naive_zero_has_no_direction_or_backtest(planted):
    labels, mask, split = planted
    metrics = score({"naive_zero": np.zeros_like(labels)}, labels, mask, split, _settings())
    row = metrics["models"]["naive_zero"]
    assert np.isnan(row["direction_acc"]) and "backtest" not in row
    assert row["rank_ic_by_horizon"] == {}


def test_a_test_date_inside_train_is_refused(planted):
    labels, mask, split = planted
    broken = Split(train=np.arange(0, 90), valid=split.valid, test=split.test, embargo=0,
                   dates=split.dates)  # fmt: skip
    with pytest.raises(RuntimeError, match="split is broken"):
        scored_span(labels, mask, broken)


def test_scoring_imports_nothing_above_evaluation():
    import ast
    from pathlib import Path

    import relcast.evaluation as ev

    # floors above evaluation, and the code that fits models (evaluation only scores)
    above = ("relcast.run.pipeline", "relcast.run.inference", "relcast.app", "relcast.cli",
             "relcast.run.steps.evaluate", "relcast.training.baselines", "relcast.training.stage",
             "lightgbm")  # fmt: skip
    for path in Path(ev.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            for name in names:
                assert not name.startswith(above), f"{path.name} imports {name}"


def test_interval_metrics_by_blocks_equal_the_whole_window():
    """Pinball loss and coverage summed a block of dates at a time are those of every finite
    cell at once (a block of one date, of a few, of all)."""
    from relcast.evaluation.scoring import interval_metrics
    from relcast.metrics import interval_coverage, pinball_loss

    rng = np.random.default_rng(0)
    D, N, H, q = 57, 13, 2, [0.1, 0.5, 0.9]
    pq = np.sort(rng.standard_normal((D, N, H, 3)).astype(np.float32), axis=-1)
    pq[rng.random((D, N, H)) < 0.1, 1] = np.nan
    z = rng.standard_normal((D, N, H)).astype(np.float32)
    z[rng.random((D, N, H)) < 0.1] = np.nan
    cell = rng.random((D, N)) > 0.2
    ok = cell[..., None] & np.isfinite(pq).all(-1) & np.isfinite(z)
    want = pinball_loss(pq[ok], z[ok], q), interval_coverage(pq[ok][:, 0], pq[ok][:, -1], z[ok])
    for block in (1, 50, 2**22):
        got = interval_metrics(pq, z, cell, q, block_cells=block)
        assert got["pinball"] == pytest.approx(want[0], rel=1e-12)
        assert got["coverage"] == pytest.approx(want[1], rel=1e-12)
        assert got["coverage_nominal"] == pytest.approx(0.8)
