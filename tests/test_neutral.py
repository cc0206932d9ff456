"""Factor-neutral scores (relcast.evaluation.neutral, and their rows from score()): a forecast
that is a mix of the factors adds nothing; a signal orthogonal to them keeps its IC."""

from __future__ import annotations

import numpy as np
import pytest

import relcast.evaluation.neutral as neutral
from relcast.evaluation.neutral import neutralize
from relcast.evaluation.scoring import ScoreSettings, score
from relcast.features.splits import Split
from relcast.metrics import daily_rank_ic

D, N, K = 120, 80, 3


def _factors(rng):
    f = [rng.normal(size=(D, N)) for _ in range(K)]
    f[1][rng.random((D, N)) < 0.1] = np.nan  # a factor without enough history on some cells
    f[2] = 0.5 * f[0] + rng.normal(size=(D, N))  # correlated factors
    return f


def test_residual_is_a_least_squares_fit_per_date(monkeypatch):
    """Against numpy's lstsq on each date's valid cells (an undefined factor cell set to the
    date's mean of that factor), in blocks of one date, several and all."""
    rng = np.random.default_rng(0)
    f = _factors(rng)
    forecast = rng.normal(size=(D, N)) + f[0]
    forecast[rng.random((D, N)) < 0.05] = np.nan
    cell = rng.random((D, N)) > 0.15
    want = np.full((D, N), np.nan)
    for t in range(D):
        ok = cell[t] & np.isfinite(forecast[t])
        cols = [np.ones(ok.sum())]
        for g in f:
            x = g[t, ok]
            cols.append(np.where(np.isfinite(x), x, np.nanmean(x)))
        X = np.stack(cols, axis=1)
        beta = np.linalg.lstsq(X, forecast[t, ok], rcond=None)[0]
        want[t, ok] = forecast[t, ok] - X @ beta
    for block in (1, 7 * N * (K + 1), 2**20):
        monkeypatch.setattr(neutral, "BLOCK_CELLS", block)
        np.testing.assert_allclose(neutralize(forecast, f, cell), want, atol=1e-10)
    days = np.array([3, 50, 51, 119])
    np.testing.assert_allclose(neutralize(forecast, f, cell, days), want[days], atol=1e-10)


def test_a_mix_of_the_factors_scores_about_zero():
    rng = np.random.default_rng(1)
    f = _factors(rng)
    cell = np.ones((D, N), bool)
    label = 0.3 * f[2] - 0.2 * f[0] + rng.normal(size=(D, N))
    mix = 2.0 * f[2] - 1.5 * f[0] + 0.3  # what the factors already say
    assert np.nanmean(daily_rank_ic(mix, label, cell)) > 0.2
    # exactly a mix: nothing is left, so no neutral IC (not a correlation of rounding noise)
    assert np.isnan(neutralize(mix, f, cell)).all()
    nearly = mix + 1e-3 * rng.normal(size=(D, N))  # a mix and a little noise
    resid = neutralize(nearly, f, cell)
    assert abs(np.nanmean(daily_rank_ic(resid, label, cell))) < 0.02  # sd ~ 1/sqrt(80 * 120)


def test_a_signal_orthogonal_to_the_factors_keeps_its_ic():
    rng = np.random.default_rng(2)
    f = _factors(rng)
    cell = rng.random((D, N)) > 0.1
    signal = rng.normal(size=(D, N))
    label = 0.2 * signal + 0.3 * f[0] + rng.normal(size=(D, N))
    raw = np.nanmean(daily_rank_ic(signal, label, cell))
    kept = np.nanmean(daily_rank_ic(neutralize(signal, f, cell), label, cell))
    assert raw > 0.1 and kept == pytest.approx(raw, abs=0.01)
    # mixed with a factor, the forecast's neutral IC is its signal's
    mixed = neutralize(signal + 2.0 * f[0], f, cell)
    assert np.nanmean(daily_rank_ic(mixed, label, cell)) == pytest.approx(kept, abs=0.01)


def test_score_reports_neutral_rows_against_the_factor_baselines():
    """Through score(): the factors are the rows named in settings.factors; a model that is
    a factor plus noise has no neutral signal, a planted one keeps it, factors have none."""
    rng = np.random.default_rng(3)
    T, N_, H = 140, 60, 1
    reversal = rng.normal(size=(T, N_, H))
    momentum = rng.normal(size=(T, N_, H))
    signal = rng.normal(size=(T, N_, H))
    labels = 0.004 * (reversal + signal) + 0.02 * rng.normal(size=(T, N_, H))
    mask = np.ones((T, N_), bool)
    dates = np.arange("2020-01-01", T, dtype="datetime64[D]").astype("datetime64[ns]")
    split = Split(np.arange(0, 60), np.arange(62, 80), np.arange(82, T), 2, dates)
    preds = {
        "reversal_1d": reversal,
        "momentum_20d": momentum,
        "copycat": reversal + 0.05 * rng.normal(size=(T, N_, H)),
        "planted": signal,
    }
    settings = ScoreSettings(quantiles=None, factors=("reversal_1d", "momentum_20d", "absent"))
    metrics = score(preds, labels, mask, split, settings)
    rows = metrics["models"]
    assert metrics["statistics"]["neutral_factors"] == ["reversal_1d", "momentum_20d"]
    assert rows["copycat"]["rank_ic"] > 0.1 and abs(rows["copycat"]["neutral"]["rank_ic"]) < 0.05
    planted = rows["planted"]
    assert planted["neutral"]["rank_ic"] == pytest.approx(planted["rank_ic"], abs=0.02)
    assert planted["neutral"]["rank_ic_t"] > 3 and np.isfinite(planted["neutral"]["ic_t"])
    assert np.isnan(rows["reversal_1d"]["neutral"]["rank_ic"])  # a factor: nothing left
    # paired tests: vs reversal_1d on raw scores; the neutral residuals have no reversal row
    assert rows["planted"]["vs_reversal"]["baseline"] == "reversal_1d"
    assert "vs_reversal" not in rows["planted"]["neutral"]
    assert "vs_reversal" not in rows["reversal_1d"]
