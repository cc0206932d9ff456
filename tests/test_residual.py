"""Stage2 residual booster: finds planted non-linear residual structure, claims nothing
where there is none."""

import numpy as np
import pytest

from relcast.models.residual import ResidualBooster


def _market(seed: int, planted: bool):
    """Labels = a linear part Stage1 already captures (+ optionally a non-linear residual)."""
    rng = np.random.default_rng(seed)
    T, N, F = 160, 24, 5
    x = rng.standard_normal((T, N, F)).astype(np.float32)
    mask = rng.random((T, N)) > 0.1
    stage1 = 0.5 * x[..., 0]
    label = stage1 + 0.3 * rng.standard_normal((T, N))
    if planted:
        label = label + 0.6 * np.sin(2 * x[..., 1]) * (x[..., 2] > 0)
    label = np.where(mask, label, np.nan).astype(np.float32)
    x[~mask] = np.nan
    train, valid = np.arange(0, 110), np.arange(115, 160)
    return x, stage1.astype(np.float32), label, mask, train, valid


def _fit(x, stage1, label, mask, train, valid, emb=None):
    return ResidualBooster(n_estimators=200, learning_rate=0.1, num_leaves=15, n_jobs=1).fit(
        x, emb, stage1, label, mask, train, valid
    )


def test_planted_residual_lowers_validation_mse():
    x, stage1, label, mask, train, valid = _market(0, planted=True)
    booster = _fit(x, stage1, label, mask, train, valid)
    rep = booster.report_
    assert rep["stage1+stage2"]["mse"] < 0.8 * rep["stage1"]["mse"]
    assert rep["stage1+stage2"]["ic"] > rep["stage1"]["ic"]
    assert booster.helped_
    # predict = calibrated stage1 + correction, NaN outside the mask
    pred = booster.predict(x, None, stage1, mask)
    assert np.isnan(pred[~mask]).all() and np.isfinite(pred[mask]).all()
    np.testing.assert_allclose(
        pred[mask],
        (booster.baseline(stage1) + booster.correction(x, None, mask))[mask],
        rtol=1e-5,
        atol=1e-6,
    )


def test_stage1_in_other_units_is_calibrated_first():
    # Stage1 trained with the z-score MSE loss predicts in z-score units, not returns
    x, stage1, label, mask, train, valid = _market(3, planted=True)
    booster = _fit(x, 40.0 * stage1, label, mask, train, valid)
    assert booster.scale_ == pytest.approx(1 / 40, rel=0.1)
    assert booster.report_["stage1+stage2"]["mse"] < 0.8 * booster.report_["stage1"]["mse"]
    raw = ResidualBooster(n_estimators=50, calibrate=False, n_jobs=1)
    raw.fit(x, None, 40.0 * stage1, label, mask, train, valid)
    # uncalibrated, the "Stage1 alone" line is off by the unit mismatch
    assert raw.report_["stage1"]["mse"] > 100 * booster.report_["stage1"]["mse"]


def test_no_residual_structure_claims_no_big_gain():
    x, stage1, label, mask, train, valid = _market(1, planted=False)
    booster = _fit(x, stage1, label, mask, train, valid)
    assert booster.report_["mse_rel_gain"] < 0.03


def test_embeddings_are_used_and_checked():
    x, stage1, label, mask, train, valid = _market(2, planted=True)
    # the residual's driver hidden in an "embedding" instead of the raw features
    emb = np.stack([x[..., 1], x[..., 2]], axis=-1)
    raw = x[..., [0, 3, 4]]
    with_emb = _fit(raw, stage1, label, mask, train, valid, emb=emb)
    without = ResidualBooster(n_estimators=200, learning_rate=0.1, use_embeddings=False, n_jobs=1)
    without.fit(raw, emb, stage1, label, mask, train, valid)
    assert with_emb.report_["stage1+stage2"]["mse"] < without.report_["stage1+stage2"]["mse"]
    with pytest.raises(ValueError, match="embeddings"):
        _fit(raw, stage1, label, mask, train, valid, emb=emb[:, :5])


def test_save_load_round_trip(tmp_path):
    x, stage1, label, mask, train, valid = _market(4, planted=True)
    booster = _fit(x, 40.0 * stage1, label, mask, train, valid)
    loaded = ResidualBooster.load(booster.save(tmp_path / "stage2" / "booster.json"))
    np.testing.assert_array_equal(
        loaded.predict(x, None, 40.0 * stage1, mask), booster.predict(x, None, 40.0 * stage1, mask)
    )
    assert loaded.helped_ == booster.helped_ and loaded.scale_ == booster.scale_
