"""Readers: long CSV/Parquet, per-symbol folders, qlib folders, universes and bad input."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from relcast.data.panel import RelcastDataError
from relcast.data.readers import read_panel, read_universe

FIELDS = ["open", "high", "low", "close", "volume"]


def make_bars(symbols=("AAA", "BBB", "CCC"), num_days=8, seed=0) -> pd.DataFrame:
    """A clean long table; prices are multiples of 1/8 so float32 holds them exactly."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-03-01", periods=num_days)
    rows = []
    for sym in symbols:
        close = 20 + np.cumsum(rng.integers(-8, 9, num_days)) / 8
        open_ = close + rng.integers(-4, 5, num_days) / 8
        high = np.maximum(open_, close) + rng.integers(0, 5, num_days) / 8
        low = np.minimum(open_, close) - rng.integers(0, 5, num_days) / 8
        volume = rng.integers(100, 1000, num_days).astype(float)
        rows.append(
            pd.DataFrame(
                {
                    "date": dates,
                    "symbol": sym,
                    "open": open_,
                    "high": high,
                    "low": low,
                    "close": close,
                    "volume": volume,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def write_csv(frame: pd.DataFrame, path) -> str:
    out = frame.copy()
    out["date"] = pd.to_datetime(out["date"]).dt.strftime("%Y-%m-%d")
    out.to_csv(path, index=False)
    return path


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def sort_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["date", "symbol"]).reset_index(drop=True)


# ---------------------------------------------------------------------------- good input
def test_long_csv_round_trip_any_order_and_case(tmp_path):
    bars = make_bars()
    shuffled = bars.sample(frac=1.0, random_state=1)  # long files may come in any order
    shuffled["date"] = shuffled["date"].dt.strftime("%Y-%m-%d")
    path = tmp_path / "bars.csv"
    shuffled.rename(columns=str.upper).to_csv(path, index=False)  # names are case-insensitive
    panel = read_panel(path)
    assert list(panel.symbols) == ["AAA", "BBB", "CCC"]
    assert panel.fields == tuple(FIELDS)
    assert panel.mask.all()
    got = sort_frame(panel.to_frame())
    want = sort_frame(bars)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_parquet_with_datetime_column_and_extra_field(tmp_path):
    bars = make_bars().rename(columns={"date": "datetime"})
    bars["amount"] = bars["close"] * bars["volume"]
    bars["name"] = "some text"  # a text column is ignored, not a field
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path)
    panel = read_panel(path)
    assert panel.fields == (*FIELDS, "amount")
    np.testing.assert_allclose(
        panel.field("amount"), panel.field("close") * panel.field("volume"), rtol=1e-6
    )


def test_intraday_timestamps_and_leading_zero_symbols(tmp_path):
    bars = make_bars(symbols=("000001", "600000"), num_days=4)
    stamps = pd.date_range("2021-03-01 09:30", periods=4, freq="5min")
    bars["date"] = np.tile(stamps, 2)
    out = bars.copy()
    out["date"] = out["date"].dt.strftime("%Y-%m-%d %H:%M:%S")
    out.to_csv(tmp_path / "bars.csv", index=False)
    panel = read_panel(tmp_path / "bars.csv")
    assert list(panel.symbols) == ["000001", "600000"]  # not parsed as integers
    np.testing.assert_array_equal(panel.dates, stamps.to_numpy(dtype="datetime64[ns]"))


def test_separate_date_and_time_columns(tmp_path):
    bars = make_bars(symbols=("AAA",), num_days=4)
    bars["date"] = "2021-03-01"
    bars.insert(1, "time", ["09:30", "09:35", "09:40", "09:45"])
    bars.to_csv(tmp_path / "bars.csv", index=False)
    panel = read_panel(tmp_path / "bars.csv")
    want = pd.date_range("2021-03-01 09:30", periods=4, freq="5min")
    np.testing.assert_array_equal(panel.dates, want.to_numpy(dtype="datetime64[ns]"))


def test_yyyymmdd_integer_dates(tmp_path):
    bars = make_bars(num_days=3)
    bars["date"] = bars["date"].dt.strftime("%Y%m%d").astype(int)
    bars.to_csv(tmp_path / "bars.csv", index=False)
    panel = read_panel(tmp_path / "bars.csv")
    assert pd.Timestamp(panel.dates[0]) == pd.Timestamp("2021-03-01")


def test_suspension_and_late_listing_are_masked(tmp_path):
    bars = make_bars()
    susp = (bars["symbol"] == "AAA") & (bars["date"] == bars["date"].unique()[3])
    bars.loc[susp, ["open", "high", "low", "close", "volume"]] = np.nan  # empty cells
    late = (bars["symbol"] == "CCC") & (bars["date"] < bars["date"].unique()[5])
    bars = bars[~late]  # CCC listed on day 5
    panel = read_panel(write_csv(bars, tmp_path / "bars.csv"))
    a, c = list(panel.symbols).index("AAA"), list(panel.symbols).index("CCC")
    assert not panel.mask[3, a] and panel.mask[[0, 1, 2, 4, 5, 6, 7], a].all()
    assert np.isnan(panel.values[3, a]).all()  # NaN, never zero prices
    assert not panel.mask[:5, c].any() and panel.mask[5:, c].all()
    assert np.isnan(panel.values[:5, c]).all()
    assert (panel.field("close")[panel.mask] > 0).all()


def test_symbol_folder(tmp_path):
    bars = make_bars()
    folder = tmp_path / "bars"
    folder.mkdir()
    for sym, group in bars.groupby("symbol"):
        write_csv(
            group.drop(columns="symbol").iloc[1:] if sym == "BBB" else group.drop(columns="symbol"),
            folder / f"{sym}.csv",
        )
    panel = read_panel(folder)
    assert list(panel.symbols) == ["AAA", "BBB", "CCC"]
    assert not panel.mask[0, 1] and panel.mask[1:, 1].all()
    want = sort_frame(bars.drop(index=bars.index[bars["symbol"].eq("BBB")][0]))
    pd.testing.assert_frame_equal(sort_frame(panel.to_frame()), want, check_dtype=False)


def write_qlib(root, bars: pd.DataFrame, starts: dict[str, int]):
    """A tiny qlib folder; symbol s starts at calendar index starts[s]."""
    dates = sorted(bars["date"].unique())
    (root / "calendars").mkdir(parents=True)
    (root / "calendars" / "day.txt").write_text(
        "\n".join(pd.Timestamp(d).strftime("%Y-%m-%d") for d in dates) + "\n"
    )
    (root / "instruments").mkdir()
    lines = []
    for sym, group in bars.groupby("symbol"):
        start = starts.get(sym, 0)
        lines.append(
            f"{sym}\t{pd.Timestamp(dates[start]).date()}\t{pd.Timestamp(dates[-1]).date()}"
        )
        sym_dir = root / "features" / sym.lower()
        sym_dir.mkdir(parents=True)
        for name in [*FIELDS, "factor"]:
            series = (
                group[name].to_numpy()[start:] if name != "factor" else np.ones(len(dates) - start)
            )
            np.concatenate([[start], series]).astype("<f4").tofile(sym_dir / f"{name}.day.bin")
    (root / "instruments" / "all.txt").write_text("\n".join(lines) + "\n")


def test_qlib_folder(tmp_path):
    bars = make_bars(symbols=("SH600000", "SZ000001"))
    day = bars["date"].unique()[2]
    bars.loc[(bars["symbol"] == "SH600000") & (bars["date"] == day), FIELDS] = np.nan
    write_qlib(tmp_path / "qlib", bars, starts={"SZ000001": 3})
    panel = read_panel(tmp_path / "qlib")
    assert list(panel.symbols) == ["SH600000", "SZ000001"]
    assert panel.fields == (*FIELDS, "factor")
    assert panel.mask[:, 0].sum() == 7 and not panel.mask[2, 0]  # NaN row = not traded
    assert not panel.mask[:3, 1].any() and panel.mask[3:, 1].all()  # listed at index 3
    want = bars[bars["symbol"].eq("SZ000001")]["close"].to_numpy()[3:]
    np.testing.assert_array_equal(panel.field("close")[3:, 1], want.astype(np.float32))


def test_qlib_bad_price_names_bin_folder(tmp_path):
    bars = make_bars(symbols=("SH600000",))
    bars.loc[4, "close"] = -1.0
    bars.loc[4, "low"] = -2.0
    write_qlib(tmp_path / "qlib", bars, starts={})
    with pytest.raises(RelcastDataError, match=r"features/sh600000 \(date=2021-03-05"):
        read_panel(tmp_path / "qlib")


# ---------------------------------------------------------------------------- universes
@pytest.mark.parametrize("kind", ["csv", "yaml", "json", "frame"])
def test_universe_attach(tmp_path, kind):
    bars = make_bars(symbols=("AAA", "BBB", "IDX"))
    path = write_csv(bars, tmp_path / "bars.csv")
    records = [
        {"symbol": "IDX", "name": "Index", "sector": "index", "market": "X", "is_index": True},
        {"symbol": "BBB", "name": "Bee", "sector": "Energy", "market": "X", "is_index": False},
    ]
    if kind == "csv":
        universe = tmp_path / "u.csv"
        pd.DataFrame(records).to_csv(universe, index=False)
    elif kind == "yaml":
        import yaml

        universe = tmp_path / "u.yaml"
        universe.write_text(
            yaml.safe_dump(
                {r["symbol"]: {k: v for k, v in r.items() if k != "symbol"} for r in records},
                sort_keys=False,
            )
        )
    elif kind == "json":
        universe = tmp_path / "u.json"
        universe.write_text(json.dumps({"symbols": records}))
    else:
        universe = pd.DataFrame(records)
    panel = read_panel(path, universe=universe)
    assert list(panel.symbols) == ["IDX", "BBB", "AAA"]  # universe order, then the rest
    assert panel.is_index.tolist() == [True, False, False]
    assert panel.sectors.tolist() == ["index", "Energy", "unknown"]  # AAA: default meta
    assert panel.meta["name"].tolist() == ["Index", "Bee", "AAA"]


def test_universe_naming_absent_symbol_is_an_error(tmp_path):
    path = write_csv(make_bars(), tmp_path / "bars.csv")
    universe = tmp_path / "u.csv"
    pd.DataFrame({"symbol": ["AAA", "ZZZ", "YYY"], "sector": ["a", "b", "c"]}).to_csv(
        universe, index=False
    )
    before = digest(universe)
    with pytest.raises(RelcastDataError, match=r"u\.csv.*'symbol'.*\['YYY', 'ZZZ'\]"):
        read_panel(path, universe=universe)
    assert digest(universe) == before


def test_read_universe_defaults_and_bool_parsing():
    frame = read_universe(pd.DataFrame({"Symbol": ["A", "B"], "is_index": ["yes", "0"]}))
    assert frame["is_index"].tolist() == [True, False]
    assert frame["name"].tolist() == ["A", "B"] and frame["sector"].tolist() == ["unknown"] * 2


# ---------------------------------------------------------------------------- bad input
def _corrupt(bars: pd.DataFrame, case: str) -> pd.DataFrame:
    bars = bars.copy()
    if case == "missing":
        return bars.drop(columns=["volume", "low"])
    if case == "duplicate":
        return pd.concat([bars, bars.iloc[[5]]], ignore_index=True)
    if case == "non_positive":
        bars.loc[5, ["low", "close"]] = [0.0, 0.0]
        return bars
    if case == "high_low":
        bars.loc[5, ["high", "low"]] = [bars.loc[5, "low"] - 1, bars.loc[5, "high"] + 1]
        return bars
    if case == "high_close":
        bars.loc[5, "high"] = bars.loc[5, ["open", "close"]].max() - 0.5
        bars.loc[5, "low"] = bars.loc[5, "high"] - 10
        return bars
    raise AssertionError(case)


# row 5 of the frame is line 7 of the file (header = line 1, first bar = line 2)
@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing", r"missing column\(s\) \['low', 'volume'\]; found columns \['date'"),
        ("duplicate", r"column 'date' has duplicate \(date, symbol\).*line 7 .*line \d+ "),
        ("non_positive", r"column 'low' has non-positive.*line 7 \(date=2021-03-08, symbol=AAA"),
        ("high_low", r"column 'high' is below column 'low'.*line 7 \(date=2021-03-08"),
        ("high_close", r"column 'high' is below max\(open, close\).*line 7 "),
    ],
)
def test_bad_long_csv(tmp_path, case, pattern):
    path = write_csv(_corrupt(make_bars(), case), tmp_path / "bars.csv")
    before = digest(path)
    with pytest.raises(RelcastDataError, match=pattern) as err:
        read_panel(path)
    assert str(path) in str(err.value)
    assert digest(path) == before  # never modify the user's file


def test_unparseable_dates_and_numbers(tmp_path):
    bars = write_csv(make_bars(), tmp_path / "bars.csv")
    lines = open(bars).read().splitlines()
    lines[3] = "not-a-date" + lines[3][10:]
    (tmp_path / "dates.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        RelcastDataError, match=r"dates\.csv: column 'date' has unparseable.*line 4"
    ):
        read_panel(tmp_path / "dates.csv")
    lines = open(bars).read().splitlines()
    parts = lines[8].split(",")
    parts[5] = "n/a?"  # close
    lines[8] = ",".join(parts)
    (tmp_path / "nums.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        RelcastDataError, match=r"column 'close' has values that are not numbers.*line 9"
    ):
        read_panel(tmp_path / "nums.csv")


def test_empty_symbol(tmp_path):
    bars = make_bars().astype({"symbol": object})
    bars.loc[3, "symbol"] = None
    with pytest.raises(
        RelcastDataError, match=r"column 'symbol' is empty in 1 row\(s\), e.g. line 5"
    ):
        read_panel(write_csv(bars, tmp_path / "bars.csv"))


def test_many_bad_rows_show_five_examples(tmp_path):
    bars = make_bars()
    bars.loc[:9, "open"] = -1.0
    path = write_csv(bars, tmp_path / "bars.csv")
    with pytest.raises(RelcastDataError) as err:
        read_panel(path)
    message = str(err.value)
    assert "in 10 row(s)" in message and message.count("line ") == 5


def test_unsorted_per_symbol_file(tmp_path):
    bars = make_bars(symbols=("AAA", "BBB"))
    folder = tmp_path / "bars"
    folder.mkdir()
    for sym, group in bars.groupby("symbol"):
        group = group.drop(columns="symbol").reset_index(drop=True)
        if sym == "BBB":
            group = group.iloc[[0, 1, 3, 2, 4, 5, 6, 7]]
        write_csv(group, folder / f"{sym}.csv")
    before = digest(folder / "BBB.csv")
    with pytest.raises(RelcastDataError, match=r"'date' is not sorted.*BBB\.csv line 5"):
        read_panel(folder)
    assert digest(folder / "BBB.csv") == before


def test_per_symbol_file_missing_column_names_the_file(tmp_path):
    folder = tmp_path / "bars"
    folder.mkdir()
    pd.DataFrame({"date": ["2021-01-04"], "open": [1.0], "close": [1.0]}).to_csv(
        folder / "AAA.csv", index=False
    )
    with pytest.raises(RelcastDataError, match=r"AAA\.csv: missing column\(s\) \['high', 'low'"):
        read_panel(folder)


def test_too_few_dates_for_lookback(tmp_path):
    path = write_csv(make_bars(num_days=8), tmp_path / "bars.csv")
    assert read_panel(path, lookback=8).num_dates == 8
    with pytest.raises(RelcastDataError, match=r"8 distinct dates, but lookback=20 needs"):
        read_panel(path, lookback=20)


def test_missing_path(tmp_path):
    with pytest.raises(RelcastDataError, match="no such file"):
        read_panel(tmp_path / "nope.csv")
