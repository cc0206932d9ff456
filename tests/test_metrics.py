"""Signal metrics against scipy on tiny arrays, torch == numpy, and the qlib conventions."""

import numpy as np
import pytest
import torch
from scipy import stats

from relcast.metrics import (
    average_ranks,
    daily_ic,
    daily_rank_ic,
    interval_coverage,
    pinball_loss,
    signal_metrics,
    summarize_ic,
)
from relcast.training.torch_metrics import ic_torch, rank_ic_torch


def _reference(pred, label, mask, fn):
    """Per-row scipy correlation over valid cells (the slow, obviously right way)."""
    out = []
    for p, y, m in zip(pred, label, mask, strict=True):
        ok = m & np.isfinite(p) & np.isfinite(y)
        if ok.sum() < 2 or np.ptp(p[ok]) == 0 or np.ptp(y[ok]) == 0:
            out.append(np.nan)
        else:
            out.append(fn(p[ok], y[ok])[0])
    return np.array(out)


@pytest.fixture
def tiny():
    """Rows with ties, masked cells, NaNs, a single valid cell and a constant row."""
    pred = np.array(
        [
            [0.1, 0.2, 0.2, 0.5, -0.3, 0.0],
            [1.0, np.nan, 3.0, 2.0, 2.0, 5.0],
            [0.3, 0.1, 0.4, 0.1, 0.5, 0.9],
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # one valid cell only
            [0.7, 0.7, 0.7, 0.7, 0.7, 0.7],  # constant prediction
        ]
    )
    label = np.array(
        [
            [0.01, 0.03, -0.02, 0.04, 0.04, 0.0],
            [0.5, 0.1, np.nan, 0.2, 0.3, 0.3],
            [-1.0, 2.0, 0.5, 0.5, 3.0, 1.0],
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        ]
    )
    mask = np.ones_like(pred, dtype=bool)
    mask[0, 5] = False
    mask[2, [1, 4]] = False
    mask[3, 1:] = False
    return pred, label, mask


def test_daily_ic_matches_scipy_pearson(tiny):
    pred, label, mask = tiny
    ours = daily_ic(pred, label, mask)
    ref = _reference(pred, label, mask, stats.pearsonr)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert np.isnan(ours[3]) and np.isnan(ours[4])  # 1 valid cell; zero variance


def test_daily_rank_ic_matches_scipy_spearman_with_ties(tiny):
    pred, label, mask = tiny
    ours = daily_rank_ic(pred, label, mask)
    ref = _reference(pred, label, mask, stats.spearmanr)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert np.isfinite(ours[:3]).all()


def test_masked_cells_do_not_matter(tiny):
    pred, label, mask = tiny
    junk = pred.copy()
    junk[~mask] = 1e6  # would dominate the correlation if it leaked in
    np.testing.assert_allclose(daily_ic(junk, label, mask), daily_ic(pred, label, mask))
    np.testing.assert_allclose(daily_rank_ic(junk, label, mask), daily_rank_ic(pred, label, mask))


def test_average_ranks_match_rankdata_on_random_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(30, 12)).astype(float)  # many ties
    valid = rng.random((30, 12)) > 0.2
    ranks = average_ranks(x, valid)
    for row in range(30):
        ref = stats.rankdata(x[row, valid[row]], method="average")
        np.testing.assert_allclose(ranks[row, valid[row]], ref)
        assert np.isnan(ranks[row, ~valid[row]]).all()


def test_perfect_and_inverted_predictors():
    rng = np.random.default_rng(1)
    label = rng.normal(size=(8, 15))
    assert np.allclose(daily_rank_ic(np.exp(label), label), 1.0)  # monotone => rank IC 1
    assert np.allclose(daily_ic(2 * label + 3, label), 1.0)
    assert np.allclose(daily_rank_ic(-label, label), -1.0)


def test_summarize_ic_is_mean_over_std_not_annualised():
    daily = np.array([0.1, 0.3, np.nan, 0.2])
    s = summarize_ic(daily)
    assert s["n_dates"] == 3
    assert s["ic"] == pytest.approx(0.2)
    assert s["icir"] == pytest.approx(0.2 / np.std([0.1, 0.3, 0.2], ddof=1))


def test_signal_metrics_by_hand():
    pred = np.array([[1.0, -1.0, 2.0, 0.5], [0.1, 0.2, -0.3, 0.4]])
    label = np.array([[0.5, -0.5, -1.0, 0.0], [0.2, 0.1, -0.1, np.nan]])
    mask = np.array([[True, True, True, True], [True, True, True, False]])
    m = signal_metrics(pred, label, mask)
    valid = mask & np.isfinite(label)
    assert m["mse"] == pytest.approx(np.mean((pred[valid] - label[valid]) ** 2))
    # nonzero labels: 0.5/1, -0.5/-1, -1/2 (wrong), 0.2/0.1, 0.1/0.2, -0.1/-0.3 -> 5 of 6
    assert m["direction_acc"] == pytest.approx(5 / 6)
    assert m["n_dates"] == 2
    assert m["ic"] == pytest.approx(np.nanmean(daily_ic(pred, label, mask)))
    assert m["rank_ic"] == pytest.approx(np.nanmean(daily_rank_ic(pred, label, mask)))


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="shape"):
        daily_ic(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="one horizon"):
        daily_ic(np.zeros((3, 4, 2)), np.zeros((3, 4, 2)))


def test_torch_versions_equal_numpy(tiny):
    pred, label, mask = tiny
    args = [torch.tensor(a) for a in (pred, label, mask)]
    np.testing.assert_allclose(ic_torch(*args).numpy(), daily_ic(pred, label, mask), atol=1e-10)
    np.testing.assert_allclose(
        rank_ic_torch(*args).numpy(), daily_rank_ic(pred, label, mask), atol=1e-10
    )
    # float32, larger random batch with ties and masks
    rng = np.random.default_rng(2)
    p = rng.integers(0, 6, size=(16, 40)).astype(np.float32)
    y = rng.normal(size=(16, 40)).astype(np.float32)
    m = rng.random((16, 40)) > 0.3
    np.testing.assert_allclose(
        rank_ic_torch(torch.tensor(p), torch.tensor(y), torch.tensor(m)).numpy(),
        daily_rank_ic(p, y, m),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        ic_torch(torch.tensor(p), torch.tensor(y), torch.tensor(m)).numpy(),
        daily_ic(p, y, m),
        atol=1e-5,
    )


def test_ic_torch_gradient_flows_only_to_valid_cells(tiny):
    pred, label, mask = tiny
    p = torch.tensor(np.nan_to_num(pred), requires_grad=True)
    ic = ic_torch(p, torch.tensor(label), torch.tensor(mask))
    (-ic.nanmean()).backward()
    grad = p.grad.numpy()
    assert np.isfinite(grad).all()
    valid = mask & np.isfinite(label)  # pred was NaN-filled above, so only label NaNs count
    assert (grad[~valid] == 0).all()
    assert np.abs(grad[:3][valid[:3]]).sum() > 0
    # gradient ascent on IC makes the prediction more correlated with the label
    with torch.no_grad():
        p2 = p - 0.5 * p.grad
    ic2 = ic_torch(p2, torch.tensor(label), torch.tensor(mask))
    assert ic2[:3].mean() > ic[:3].mean()


def test_pinball_loss_by_hand():
    y = np.array([1.0, 2.0, np.nan])
    pred_q = np.array([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    q = [0.1, 0.5, 0.9]
    # row0 errors 1,0,-1 -> 0.1, 0, 0.1 ; row1 errors -1,0,1 -> 0.9, 0, 0.9
    assert pinball_loss(pred_q, y, q) == pytest.approx((0.1 + 0.1 + 0.9 + 0.9) / 6)
    # the true quantile minimises the loss on a large sample
    z = np.random.default_rng(3).normal(size=20000)
    losses = [pinball_loss(np.full((z.size, 1), c), z, [0.9]) for c in (0.8, 1.2816, 1.8)]
    assert np.argmin(losses) == 1
    with pytest.raises(ValueError, match="quantiles"):
        pinball_loss(np.zeros((2, 1)), np.zeros(2), [1.5])


def test_interval_coverage():
    y = np.array([0.0, 1.0, 2.0, 3.0, np.nan])
    lo = np.array([-1.0, 1.5, 1.0, 3.0, 0.0])
    hi = np.array([1.0, 2.0, 1.5, 4.0, 1.0])
    assert interval_coverage(lo, hi, y) == pytest.approx(2 / 4)  # boundaries count as inside
