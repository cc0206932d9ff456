"""Industry-relative own features (features/industry.py): numbers against a pandas groupby,
masked stocks outside every mean, no look-ahead, and the NASDAQ universe file as industries."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_lookahead import TRAIN_END, make_panel, rewrite_future

from relcast.features.build import build_features
from relcast.features.featureset import FeatureSet
from relcast.features.industry import add_industry_features, industry_codes

SECTORS = ["tech", "tech", "bank", "unknown", "tech", "bank", "", "energy"]
OWN = ["ret1", "ret5", "ma20"]


def feature_set(seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    T, N = 9, len(SECTORS)
    values = rng.normal(size=(T, N, len(OWN) + 1)).astype(np.float32)
    mask = rng.random((T, N)) > 0.25
    mask[3, [2, 5]] = False  # the whole "bank" industry is masked at t = 3
    values[~mask] = np.nan
    return FeatureSet(
        dates=pd.bdate_range("2021-01-01", periods=T).to_numpy(),
        symbols=np.array([f"S{i}" for i in range(N)]),
        names=[*OWN, "idx_EW_ret1"],
        values=values,
        mask=mask,
        groups={"own": list(OWN), "index": ["idx_EW_ret1"]},
    )


def groupby_reference(fs: FeatureSet) -> pd.DataFrame:
    """The same columns from a long table and a plain pandas groupby over traded stocks."""
    T, N, _ = fs.values.shape
    long = pd.DataFrame(
        {
            "t": np.repeat(np.arange(T), N),
            "n": np.tile(np.arange(N), T),
            "industry": np.tile(SECTORS, T),
            "valid": fs.mask.reshape(-1),
            **{name: fs.values[:, :, k].reshape(-1) for k, name in enumerate(OWN)},
        }
    )
    known = long[long["valid"] & ~long["industry"].isin(["", "unknown"])]
    means = known.groupby(["t", "industry"])[OWN].mean().add_prefix("mean_").reset_index()
    out = long.merge(means, on=["t", "industry"], how="left")
    for name in OWN:
        out[f"ind_rel_{name}"] = out[name] - out[f"mean_{name}"]
    for name in ("ret1", "ret5"):
        out[f"ind_mean_{name}"] = out[f"mean_{name}"]
    cols = [f"ind_rel_{n}" for n in OWN] + ["ind_mean_ret1", "ind_mean_ret5"]
    out.loc[out["industry"].isin(["", "unknown"]), cols] = 0.0  # no industry: the centre
    out.loc[~out["valid"], cols] = np.nan
    return out.sort_values(["t", "n"])[cols]


def test_values_match_a_pandas_groupby_over_traded_stocks():
    fs = feature_set()
    out = add_industry_features(fs, SECTORS)
    assert out.groups["industry"] == [f"ind_rel_{n}" for n in OWN] + [
        "ind_mean_ret1",
        "ind_mean_ret5",
    ]
    got = out.group("industry").reshape(-1, 5)
    want = groupby_reference(fs).to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the earlier columns are untouched, and a single-member industry is 0 relative to itself
    np.testing.assert_array_equal(out.group("own", "index"), fs.group("own", "index"))
    energy = out.group("industry")[:, 7, :3]
    assert np.all((energy == 0) | np.isnan(energy))


def test_masked_stocks_are_in_no_industry_mean():
    fs = feature_set()
    base = add_industry_features(fs, SECTORS).group("industry")
    other = feature_set()
    other.values[~other.mask] = 1e6  # a masked stock's (stale) values must not leak in
    moved = add_industry_features(other, SECTORS).group("industry")
    np.testing.assert_array_equal(np.isnan(base), np.isnan(moved))
    np.testing.assert_allclose(np.nan_to_num(base), np.nan_to_num(moved[..., :]), atol=1e-6)
    assert np.isnan(moved[~fs.mask]).all()


@pytest.mark.parametrize("t", [TRAIN_END, 199])
def test_industry_features_up_to_t_ignore_everything_after_t(t):
    panel = make_panel()
    sectors = np.array(["a", "a", "b", "b", "a", "c", "b", "a", "c", "unknown", "c", "b"])
    future = rewrite_future(panel, t, seed=t)
    before = add_industry_features(build_features(panel, train_end=TRAIN_END), sectors)
    after = add_industry_features(build_features(future, train_end=TRAIN_END), sectors)
    cols = before.columns(before.groups["industry"])
    a, b = before.values[: t + 1][..., cols], after.values[: t + 1][..., cols]
    assert np.isfinite(a).sum() > 1000
    np.testing.assert_array_equal(a, b)


def test_nasdaq_universe_file_gives_112_industries():
    path = Path(__file__).parents[1] / "../shared/data/rsr_nasdaq_industry.csv"
    if not path.is_file():
        pytest.skip("the NASDAQ industry file is not present")
    from relcast.data.universe import read_universe

    meta = read_universe(path)
    codes = industry_codes(meta["sector"])
    assert len(meta) == 1026 and codes.max() + 1 == 112  # RSR's 112 industry relations
    assert (codes == -1).sum() == 156  # the funds/ETFs with an empty sector
    assert meta.set_index("symbol").loc["AAPL", "sector"] == "Computer Manufacturing"
