"""Block reader: the memory-mapped panel equals read_panel's, with memory bounded by the block."""

import tracemalloc

import numpy as np
import pandas as pd
import pytest
from test_health import clean_bars, plant
from test_readers import make_bars

import relcast.data.blockread as blockread
from relcast.data.blockread import read_panel_to_memmap
from relcast.data.panel import RelcastDataError
from relcast.data.readers import read_panel


def assert_same_panel(got, want) -> None:
    """Dates, symbols (order), fields, meta, mask, values (bit for bit) and health account."""
    assert np.array_equal(got.dates, want.dates)
    assert list(got.symbols) == list(want.symbols)
    assert got.fields == want.fields
    pd.testing.assert_frame_equal(got.meta, want.meta)
    assert np.array_equal(got.mask, want.mask)
    assert got.values.dtype == np.float32 and got.values.shape == want.values.shape
    assert np.array_equal(got.values.view(np.uint32), want.values.view(np.uint32))
    assert got.health.to_dict() == want.health.to_dict()


def memory_mapped(panel, values_path) -> bool:
    base = panel.values
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    return base is not None and str(base.filename) == str(values_path)


def count_blocks(monkeypatch) -> list:
    """Record the symbols of each block the reader turns into a panel."""
    seen = []
    real = blockread.frame_to_panel

    def spy(frame, meta=None, health=None):
        part = real(frame, meta, health)
        seen.append(list(part.symbols))
        return part

    monkeypatch.setattr(blockread, "frame_to_panel", spy)
    return seen


def both(path, tmp_path, **kwargs):
    want = read_panel(path, **{k: v for k, v in kwargs.items() if k != "block_rows"})
    got = read_panel_to_memmap(path, tmp_path / "values.npy", **kwargs)
    assert memory_mapped(got, tmp_path / "values.npy")
    return got, want


# ---------------------------------------------------------------------------- equal panels
def test_clean_parquet_in_several_blocks(tmp_path, monkeypatch):
    bars = make_bars(symbols=[f"S{i:02d}" for i in range(12)], num_days=30)
    bars = bars.assign(amount=bars["close"] * bars["volume"]).sample(frac=1, random_state=0)
    bars.columns = [c.upper() if c in ("open", "close") else c for c in bars.columns]
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path, index=False)
    blocks = count_blocks(monkeypatch)
    got, want = both(path, tmp_path, block_rows=65)  # 2 symbols (60 rows) a block
    assert_same_panel(got, want)
    assert len(blocks) == 6 and all(len(b) == 2 for b in blocks)
    assert got.fields == ("open", "high", "low", "close", "volume", "amount")
    assert got.mask.all() and got.health.totals() == {}
    with pytest.raises(ValueError):  # copy-on-write map: the file cannot be changed through it
        np.load(tmp_path / "values.npy", mmap_mode="r")[0, 0, 0] = 1.0


def test_dirty_parquet_with_universe_and_suspension(tmp_path, monkeypatch):
    """Every health reason, a suspended and a late-listed symbol, universe order; one symbol
    a block, so each block's counts must add up to read_panel's account."""
    bars, _ = plant(clean_bars())
    extra = clean_bars(seed=7).query("symbol == 'AAA'").assign(symbol="DDD")
    extra.loc[extra.index[40:55], ["open", "high", "low", "close", "volume"]] = np.nan
    late = clean_bars(seed=8).query("symbol == 'AAA'").iloc[60:].assign(symbol=" EEE ")
    bars = pd.concat([bars, extra, late], ignore_index=True)
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path, index=False)
    universe = tmp_path / "universe.csv"
    pd.DataFrame({"symbol": ["EEE", "CCC", "AAA"], "sector": ["x", "y", "x"]}).to_csv(
        universe, index=False
    )
    blocks = count_blocks(monkeypatch)
    got, want = both(path, tmp_path, universe=universe, block_rows=100)
    assert_same_panel(got, want)
    assert len(blocks) == 5
    assert list(got.symbols) == ["EEE", "CCC", "AAA", "BBB", "DDD"]
    assert got.health.counts["missing_value"]["DDD"] == 15 and not got.mask[40:55, 4].any()
    assert got.health.counts["duplicate_bar"] == {"CCC": 1}
    assert got.health.counts["gap"] == {"CCC": 1}
    assert not got.mask[:60, 0].any() and got.mask[60:, 0].all()  # EEE listed late


def test_dates_are_parsed_as_one_column(tmp_path, monkeypatch):
    """Day-first dates: the late symbol's own rows (days <= 12) alone would be ambiguous."""
    bars = make_bars(symbols=["AAA", "ZZZ"], num_days=40)
    bars = bars[(bars["symbol"] == "AAA") | (pd.to_datetime(bars["date"]).dt.day <= 12)]
    bars = bars.assign(date=pd.to_datetime(bars["date"]).dt.strftime("%d/%m/%Y"))
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path, index=False)
    blocks = count_blocks(monkeypatch)
    got, want = both(path, tmp_path, block_rows=1)
    assert_same_panel(got, want)
    assert blocks == [["AAA"], ["ZZZ"]]


def test_intraday_times_are_kept_for_a_symbol_with_one_bar_a_day(tmp_path, monkeypatch):
    """read_panel keeps clock times when any symbol has two bars a day: a block holding only
    a one-bar-a-day symbol must not turn its bars into daily ones."""
    stamps = pd.date_range("2024-03-04 09:30", periods=6, freq="30min")
    stamps = stamps.append(stamps + pd.Timedelta(days=1))
    rows = []
    for sym, keep in (("AAA", slice(None)), ("ZZZ", slice(0, None, 6))):
        frame = make_bars(symbols=[sym], num_days=len(stamps)).iloc[keep]
        rows.append(frame.assign(date=stamps[keep].strftime("%Y-%m-%d %H:%M:%S-05:00")))
    path = tmp_path / "bars.parquet"
    pd.concat(rows).to_parquet(path, index=False)
    blocks = count_blocks(monkeypatch)
    got, want = both(path, tmp_path, block_rows=2)
    assert_same_panel(got, want)
    assert len(blocks) == 2 and got.num_dates == 12
    # and daily bars stamped 16:00 are kept by date, as read_panel keeps them
    daily = make_bars(num_days=5).assign(date=lambda f: f["date"] + pd.Timedelta(hours=16))
    daily.to_parquet(path, index=False)
    got, want = both(path, tmp_path, block_rows=5)
    assert_same_panel(got, want)
    assert (got.dates == got.dates.astype("datetime64[D]")).all()


DATE_KINDS = {
    "tz_aware_16h": lambda d: {
        "date": d.dt.tz_localize("America/New_York") + pd.Timedelta(16, "h")
    },
    "date32": lambda d: {"date": d.dt.date},
    "date_and_time": lambda d: {"date": d.dt.strftime("%Y-%m-%d"), "time": "16:00"},
    "yyyymmdd_int": lambda d: {"date": d.dt.strftime("%Y%m%d").astype(int)},
}


@pytest.mark.parametrize("kind", DATE_KINDS)
def test_date_column_kinds_and_a_text_column(tmp_path, kind):
    bars = make_bars(symbols=["AAA", "BBB", "CCC", "DDD"], num_days=12)
    bars = bars.assign(**DATE_KINDS[kind](bars["date"]), name="x" + bars["symbol"], Amount=1.5)
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path, index=False)
    got, want = both(path, tmp_path, block_rows=12)
    assert_same_panel(got, want)
    assert got.num_dates == 12 and got.fields[-1] == "amount" and "name" not in got.fields


@pytest.mark.parametrize("layout", ["csv", "folder"])
def test_other_layouts_load_whole_and_are_copied(tmp_path, layout):
    bars, _ = plant(clean_bars())
    if layout == "csv":
        path = tmp_path / "bars.csv"
        bars.to_csv(path, index=False)
    else:
        path = tmp_path / "bars"
        path.mkdir()
        for sym, rows in bars.groupby("symbol"):
            rows.drop(columns="symbol").sort_values("date").drop_duplicates().to_csv(
                path / f"{sym}.csv", index=False
            )
    got, want = both(path, tmp_path)
    assert_same_panel(got, want)


# ---------------------------------------------------------------------------- errors
def raised(read, *args, **kwargs) -> str:
    with pytest.raises(RelcastDataError) as err:
        read(*args, **kwargs)
    return str(err.value)


def test_too_many_bad_rows_same_message(tmp_path):
    """Three broken symbols in three blocks: read_panel's worst symbol and count of them."""
    bars, _ = plant(clean_bars())
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path, index=False)
    values = tmp_path / "values.npy"
    earlier = read_panel_to_memmap(path, values, block_rows=100)  # read with the default
    for fraction in (0.02, 0.011):
        want = raised(read_panel, path, max_bad_fraction=fraction, strict=True)
        got = raised(
            read_panel_to_memmap,
            path,
            values,
            max_bad_fraction=fraction,
            block_rows=100,
            strict=True,
        )
        assert got == want
    assert "3 of 99 rows of symbol CCC are bad" in got and "3 symbol(s) like this" in got
    # a failed read leaves the earlier file (still mapped by ``earlier``) as it was
    assert_same_panel(earlier, read_panel(path))
    assert np.array_equal(np.load(values), earlier.values, equal_nan=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.parquet", "values.npy"]


def test_structural_errors_same_message(tmp_path):
    bars = make_bars(symbols=["AAA", "BBB", "CCC"], num_days=10)
    path = tmp_path / "bars.parquet"
    values = tmp_path / "values.npy"

    def check(frame) -> str:
        frame.to_parquet(path, index=False)
        want = raised(read_panel, path)
        assert raised(read_panel_to_memmap, path, values, block_rows=10) == want
        return want

    assert "missing column(s) ['low']" in check(bars.drop(columns="low"))
    # conflicting duplicates in two blocks: every such row counted, as read_panel counts them
    doubled = bars.iloc[[3, 25]].assign(close=99.0)
    assert "in 4 row(s)" in check(pd.concat([bars, doubled], ignore_index=True))
    no_symbol = bars.astype({"symbol": object})
    no_symbol.loc[[2, 17], "symbol"] = [None, "  "]
    assert "column 'symbol' is empty in 2 row(s)" in check(no_symbol)
    assert "'volume' is empty in every row" in check(bars.assign(volume=np.nan))
    universe = tmp_path / "u.csv"
    pd.DataFrame({"symbol": ["AAA", "XXX"]}).to_csv(universe, index=False)
    bars.to_parquet(path, index=False)
    want = raised(read_panel, path, universe)
    assert raised(read_panel_to_memmap, path, values, universe, block_rows=10) == want


def test_bad_dates_name_the_column_and_file(tmp_path):
    bars = make_bars(num_days=10).assign(date=lambda f: f["date"].dt.strftime("%Y-%m-%d"))
    bars.loc[[4, 14], "date"] = "not a date"
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path, index=False)
    got = raised(read_panel_to_memmap, path, tmp_path / "v.npy", block_rows=10)
    assert got.startswith(f"{path}: column 'date' has unparseable or empty dates")
    assert "row 5 (date=not a date, symbol=AAA)" in got  # the first row with that value


# ---------------------------------------------------------------------------- memory
def traced_peak(call) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_is_bounded_by_the_block(tmp_path):
    """40 symbols x 2,500 dates: blocks of 4 symbols need a fraction of read_panel's peak
    (numpy and Python allocations, as tracemalloc sees them)."""
    rng = np.random.default_rng(0)
    T, N = 2500, 40
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, (T, N)), axis=0))
    bars = pd.DataFrame(
        {
            "date": np.tile(pd.bdate_range("2000-01-03", periods=T).strftime("%Y-%m-%d"), N),
            "symbol": np.repeat([f"S{i:02d}" for i in range(N)], T),
            "open": close.T.ravel(),
            "high": close.T.ravel() * 1.01,
            "low": close.T.ravel() * 0.99,
            "close": close.T.ravel(),
            "volume": rng.integers(100, 1000, T * N).astype(float),
        }
    )
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path, index=False, row_group_size=20_000)
    del bars, close
    values = tmp_path / "values.npy"
    whole = traced_peak(lambda: read_panel(path))
    blocks = traced_peak(lambda: read_panel_to_memmap(path, values, block_rows=10_000))
    print(f"traced peak: read_panel {whole / 2**20:.1f} MiB, blocks {blocks / 2**20:.1f} MiB")
    assert blocks < 0.3 * whole
    assert_same_panel(read_panel_to_memmap(path, values, block_rows=10_000), read_panel(path))
