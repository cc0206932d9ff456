"""Readers: long CSV/Parquet, per-symbol folders, qlib folders, universes and bad input."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from relcast.data.panel import RelcastDataError
from relcast.data.readers import read_panel
from relcast.data.universe import read_universe

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
        read_panel(tmp_path / "qlib", max_bad_fraction=0, strict=True)
    panel = read_panel(tmp_path / "qlib")  # by default masked and counted
    assert not panel.mask[4, 0] and panel.health.counts == {"nonpositive_price": {"SH600000": 1}}


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
    if case == "duplicate":  # same (date, symbol), different close
        return pd.concat([bars, bars.iloc[[5]].assign(close=99.0)], ignore_index=True)
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
        (
            "duplicate",
            r"'date' has duplicate \(date, symbol\) rows with different.*line 7 .*line \d+ ",
        ),
        ("non_positive", r"column 'low' has non-positive.*line 7 \(date=2021-03-08, symbol=AAA"),
        ("high_low", r"column 'high' is below column 'low'.*line 7 \(date=2021-03-08"),
        ("high_close", r"column 'high' is below max\(open, close\).*line 7 .*max_bad_fraction=0"),
    ],
)
def test_bad_long_csv(tmp_path, case, pattern):
    path = write_csv(_corrupt(make_bars(), case), tmp_path / "bars.csv")
    before = digest(path)
    with pytest.raises(RelcastDataError, match=pattern) as err:
        read_panel(path, max_bad_fraction=0, strict=True)  # every bad row is an error
    assert str(path) in str(err.value)
    assert digest(path) == before  # never modify the user's file
    if case in ("non_positive", "high_low"):  # by default one bad row is masked and counted
        panel = read_panel(path)
        assert not panel.mask[5, 0] and panel.mask.sum() == 23
        assert sum(panel.health.totals().values()) == 1


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
    bars = make_bars(num_days=12)
    bars.loc[:9, "open"] = -1.0  # 10 of symbol AAA's 12 rows
    path = write_csv(bars, tmp_path / "bars.csv")
    with pytest.raises(RelcastDataError) as err:
        read_panel(path, strict=True)
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


# ---------------------------------------------------------------------------- real files
FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "rsr_nasdaq"


def test_rsr_nasdaq_fixture_read_as_is():
    """Real rows of 4 NASDAQ files: NASDAQ_<T>_30Y.csv names, ',Open,...' header, offsets
    that change with daylight saving (-05:00 -> -04:00 on 2017-03-12), one Open = 0.0 row."""
    panel = read_panel(FIXTURE)
    assert list(panel.symbols) == ["AAON", "AAPL", "BPOPN", "ZUMZ"]
    assert panel.fields == tuple(FIELDS)
    assert panel.num_dates == 40
    assert str(panel.dates[0])[:10] == "2017-02-13" and str(panel.dates[-1])[:10] == "2017-04-10"
    assert (panel.dates == panel.dates.astype("datetime64[D]")).all()  # trading dates, no clock
    t = {str(d)[:10]: i for i, d in enumerate(panel.dates)}
    aapl = list(panel.symbols).index("AAPL")
    assert panel.field("close")[t["2017-03-10"], aapl] == np.float32(139.14)  # -05:00 row
    assert panel.field("close")[t["2017-03-13"], aapl] == np.float32(139.2)  # -04:00 row
    bpopn = list(panel.symbols).index("BPOPN")  # 2017-03-07: Open = 0.0 (missing)
    assert not panel.mask[t["2017-03-07"], bpopn] and panel.mask.sum() == 4 * 40 - 1
    assert panel.health.totals() == {"missing_open": 1}
    assert panel.health.counts["missing_open"] == {"BPOPN": 1}


def test_rsr_nasdaq_full_folder():
    folder = __import__("pathlib").Path(__file__).parents[1] / "../shared/data/rsr_nasdaq"
    if not folder.is_dir():
        pytest.skip("real NASDAQ folder not present")
    panel = read_panel(folder)
    assert panel.num_symbols == 1026 and "AAPL" in panel.symbols
    assert str(panel.dates[0])[:10] == "2012-11-19" and str(panel.dates[-1])[:10] == "2017-12-08"
    assert panel.health.totals()["missing_open"] == 957  # the README's count


# ---------------------------------------------------------------------------- issue 17
def _folder(tmp_path, files: dict[str, pd.DataFrame]):
    folder = tmp_path / "bars"
    folder.mkdir()
    for name, frame in files.items():
        frame.to_csv(folder / name, index=False)
    return folder


def _with_dates(frame: pd.DataFrame, fmt: str) -> pd.DataFrame:
    return frame.assign(date=pd.to_datetime(frame["date"]).dt.strftime(fmt)).drop(columns="symbol")


def test_dayfirst_dates_are_detected_not_scrambled(tmp_path):
    bars = make_bars(symbols=("AAA", "BBB"), num_days=30)  # 2021-03-01 .. 2021-04-09
    a, b = (bars[bars["symbol"] == s] for s in ("AAA", "BBB"))
    # only BBB is day-first: 02/03/2021 must be 2 March, not February 3
    folder = _folder(
        tmp_path, {"AAA.csv": _with_dates(a, "%Y-%m-%d"), "BBB.csv": _with_dates(b, "%d/%m/%Y")}
    )
    panel = read_panel(folder)
    assert panel.num_dates == 30 and panel.mask.all()
    assert str(panel.dates[-1])[:10] == "2021-04-09"
    month_first = write_csv(bars, tmp_path / "us.csv")
    frame = pd.read_csv(month_first)
    frame["date"] = pd.to_datetime(frame["date"]).dt.strftime("%m/%d/%Y")
    frame.to_csv(tmp_path / "us.csv", index=False)
    assert str(read_panel(tmp_path / "us.csv").dates[-1])[:10] == "2021-04-09"


def test_ambiguous_day_month_column_is_refused_with_the_choice(tmp_path):
    bars = make_bars(symbols=("AAA",), num_days=8)  # 2021-03-01 .. 2021-03-10: days <= 12
    path = tmp_path / "eu.csv"
    bars.assign(date=bars["date"].dt.strftime("%d/%m/%Y")).to_csv(path, index=False)
    with pytest.raises(RelcastDataError, match=r"eu\.csv: column 'date'.*data\.date_format="):
        read_panel(path)
    assert str(read_panel(path, date_format="dayfirst").dates[1])[:10] == "2021-03-02"
    assert str(read_panel(path, date_format="%d/%m/%Y").dates[1])[:10] == "2021-03-02"
    assert str(read_panel(path, date_format="monthfirst").dates[1])[:10] == "2021-02-03"
    mixed = bars.assign(date=bars["date"].dt.strftime("%d/%m/%Y"))
    mixed.loc[0, "date"], mixed.loc[1, "date"] = "13/01/2021", "01/14/2021"
    mixed.to_csv(path, index=False)
    with pytest.raises(RelcastDataError, match=r"mixes day-first.*line 3"):
        read_panel(path)


def test_offsets_changing_with_daylight_saving_give_local_dates(tmp_path):
    rows = [
        ("2017-03-09 16:00:00-05:00", "AAA"),
        ("2017-03-10 16:00:00-05:00", "AAA"),
        ("2017-03-13 16:00:00-04:00", "AAA"),
        ("2017-03-10 07:00:00+08:00", "BBB"),  # 23:00 UTC the day before: local date counts
        ("2017-03-13 07:00:00+08:00", "BBB"),
    ]
    frame = pd.DataFrame(rows, columns=["datetime", "symbol"])
    frame[["open", "high", "low", "close"]] = [10.0, 11.0, 9.0, 10.5]
    frame["volume"] = [100.0, 200.0, 300.0, 400.0, 500.0]
    frame.to_csv(tmp_path / "bars.csv", index=False)
    panel = read_panel(tmp_path / "bars.csv")
    assert [str(d)[:10] for d in panel.dates] == ["2017-03-09", "2017-03-10", "2017-03-13"]
    assert panel.mask.tolist() == [[True, False], [True, True], [True, True]]


@pytest.mark.parametrize(
    "names, symbols",
    [
        (["BRK.B.csv", "AAPL.csv"], ["AAPL", "BRK.B"]),
        (["600000.SH.csv", "600000.SZ.csv"], ["600000.SH", "600000.SZ"]),
        (["NASDAQ_AAPL_30Y.csv", "NASDAQ_BRK.B_30Y.csv"], ["AAPL", "BRK.B"]),
        (["A_X.csv.gz", "B_X.csv.gz"], ["A", "B"]),
    ],
)
def test_symbols_from_file_names_keep_dots(tmp_path, names, symbols):
    bars = make_bars(symbols=("AAA",), num_days=4).drop(columns="symbol")
    folder = _folder(tmp_path, {})
    for name in names:
        bars.to_csv(folder / name, index=False)
    assert sorted(read_panel(folder).symbols) == symbols


def test_symbol_pattern_option(tmp_path):
    bars = make_bars(symbols=("AAA",), num_days=4).drop(columns="symbol")
    folder = _folder(tmp_path, {"NASDAQ_AAPL_30Y.csv": bars})  # one file: nothing to compare
    assert list(read_panel(folder).symbols) == ["NASDAQ_AAPL_30Y"]
    assert list(read_panel(folder, symbol_pattern="NASDAQ_{symbol}_30Y").symbols) == ["AAPL"]
    assert list(read_panel(folder, symbol_pattern="*_{symbol}_*").symbols) == ["AAPL"]
    with pytest.raises(RelcastDataError, match=r"do not match data\.symbol_pattern.*NASDAQ_AAPL"):
        read_panel(folder, symbol_pattern="NYSE_{symbol}")
    bars.to_csv(folder / "NASDAQ_AAPL_30Y.csv.gz", index=False)
    with pytest.raises(RelcastDataError, match=r"both give symbol 'AAPL'"):
        read_panel(folder, symbol_pattern="NASDAQ_{symbol}_30Y")


def test_inf_prices_are_masked_and_counted_or_refused(tmp_path):
    bars = make_bars(symbols=("AAA", "BBB"), num_days=30)
    bars.loc[3, "close"] = np.inf
    bars.loc[40, "volume"] = -np.inf
    path = write_csv(bars, tmp_path / "bars.csv")
    panel = read_panel(path)
    assert not panel.mask[3, 0] and not panel.mask[10, 1] and panel.mask.sum() == 58
    assert np.isfinite(panel.values[panel.mask]).all()
    assert panel.health.counts["inf"] == {"AAA": 1, "BBB": 1}
    with pytest.raises(RelcastDataError, match=r"column 'close' has infinite values.*line 5"):
        read_panel(path, max_bad_fraction=0, strict=True)


def test_date_only_row_among_datetimes(tmp_path):
    bars = make_bars(symbols=("AAA", "BBB"), num_days=5)
    daily = bars.assign(date=bars["date"].dt.strftime("%Y-%m-%d 16:00:00"))
    daily.loc[6, "date"] = daily.loc[6, "date"][:10]  # BBB, written without its time
    daily.to_csv(tmp_path / "daily.csv", index=False)
    assert read_panel(tmp_path / "daily.csv").num_dates == 5  # no extra date
    minutes = pd.concat(
        [daily.assign(date=daily["date"].str[:10] + t) for t in (" 09:30", " 09:31")]
    )
    minutes.iloc[6, 0] = minutes.iloc[6, 0][:10]
    minutes.to_csv(tmp_path / "minutes.csv", index=False)
    with pytest.raises(RelcastDataError, match=r"date-only values among the date-times.*line 8"):
        read_panel(tmp_path / "minutes.csv")


def test_doubled_empty_and_bool_columns_are_clear_errors(tmp_path):
    bars = make_bars(num_days=4)
    path = tmp_path / "bars.csv"
    bars.assign(Close=bars["close"]).to_csv(path, index=False)
    with pytest.raises(RelcastDataError, match=r"columns 'close' and 'Close' both name"):
        read_panel(path)
    bars.assign(volume=np.nan).to_csv(path, index=False)
    with pytest.raises(RelcastDataError, match=r"bars\.csv: column 'volume' is empty in every"):
        read_panel(path)
    folder = _folder(tmp_path, {"AAA.csv": bars.drop(columns="symbol").assign(volume=None)})
    with pytest.raises(RelcastDataError, match=r"AAA\.csv: column 'volume' is empty"):
        read_panel(folder)
    parquet = tmp_path / "bars.parquet"
    bars.assign(volume=bars["volume"] > 500).to_parquet(parquet)
    with pytest.raises(RelcastDataError, match=r"column 'volume' holds true/false"):
        read_panel(parquet)
    bars.assign(halted=bars["volume"] > 500).to_parquet(parquet)
    flag = read_panel(parquet).field("halted")
    assert set(np.unique(flag)) == {0.0, 1.0}  # a bool extra is a 0/1 field, not dropped


def test_garbage_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "bars.parquet"
    path.write_bytes(b"PAR1 this is not parquet" * 10)
    with pytest.raises(RelcastDataError, match=r"bars\.parquet: not a readable Parquet"):
        read_panel(path)


@pytest.mark.parametrize("damage", ["truncated", "odd_bytes", "nan_start"])
def test_damaged_qlib_bin_is_refused(tmp_path, damage):
    bars = make_bars(symbols=("SH600000",))
    write_qlib(tmp_path / "qlib", bars, starts={})
    file = tmp_path / "qlib" / "features" / "sh600000" / "close.day.bin"
    data = np.fromfile(file, dtype="<f4")
    if damage == "truncated":
        data[:5].tofile(file)
    elif damage == "odd_bytes":
        file.write_bytes(data.tobytes()[:-2])
    else:
        data[0] = np.nan
        data.tofile(file)
    pattern = {
        "truncated": r"close\.day\.bin: column 'close' covers.*truncated",
        "odd_bytes": r"close\.day\.bin: column 'close' has \d+ bytes.*truncated",
        "nan_start": r"close\.day\.bin: column 'close' starts with nan",
    }[damage]
    with pytest.raises(RelcastDataError, match=pattern):
        read_panel(tmp_path / "qlib")


@pytest.mark.parametrize(
    "text, date_format, want",
    [
        ("2012-11-19 16:00:00-05:00", None, "2012-11-19 16:00:00"),
        ("2018-01-02T09:30:00.5Z", None, "2018-01-02 09:30:00.500"),
        ("20180102", None, "2018-01-02"),
        ("2018/01/02", None, "2018-01-02"),
        ("Jan 2, 2018 10:00 -0500", None, "2018-01-02 10:00:00"),
        ("02-01-2018", "%d-%m-%Y", "2018-01-02"),  # the "-2018" is no offset
        ("02.01.2018 10:00:00+0100", "%d.%m.%Y %H:%M:%S%z", "2018-01-02 10:00:00"),
        ("02/01/2018 09:30", "monthfirst", "2018-02-01 09:30:00"),
    ],
)
def test_parse_date_text_reads_the_wall_clock(text, date_format, want):
    from relcast.data.dates import parse_date_text

    values, _ = parse_date_text(pd.Series([text]), date_format)
    assert pd.Timestamp(values[0]) == pd.Timestamp(want)
