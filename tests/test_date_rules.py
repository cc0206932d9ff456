"""Dates are read with one rule per column, chosen from the whole column and stated in the
health account; a minority of rows that would change the calendar's order or frequency is
refused, naming them (issue #27, class 2). Both readers: read_panel and the memory-mapped
Parquet reader (``data.store: memmap``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_readers import make_bars

from relcast.data.blockread import read_panel_to_memmap
from relcast.data.panel import RelcastDataError
from relcast.data.readers import read_panel


def _write(bars: pd.DataFrame, path, dates) -> str:
    out = bars.assign(date=dates)
    if str(path).endswith(".parquet"):
        out.to_parquet(path, index=False)
    else:
        out.to_csv(path, index=False)
    return str(path)


def _read(reader: str, path, tmp_path, **kw):
    if reader == "memmap":
        return read_panel_to_memmap(path, tmp_path / "values.npy", **kw)
    return read_panel(path, **kw)


READERS = [("read_panel", "bars.csv"), ("memmap", "bars.parquet")]


@pytest.mark.parametrize(("reader", "name"), READERS)
@pytest.mark.parametrize("fmt", ["%d/%m/%y", "%d.%m.%y", "%d-%m-%y", "%m/%d/%y", "%d/%m/%Y"])
def test_day_month_year_layouts_keep_the_true_calendar(fmt, reader, name, tmp_path):
    # a year of bars (so every order has its proof) written in a day/month/year layout
    bars = make_bars(symbols=("AAA", "BBB"), num_days=250)  # 2021-03-01 .. 2022-02-11
    true = pd.to_datetime(bars["date"])
    path = _write(bars, tmp_path / name, true.dt.strftime(fmt))
    panel = _read(reader, path, tmp_path)
    assert np.array_equal(panel.dates, np.unique(true.to_numpy("datetime64[ns]")))
    order = "day first" if fmt.startswith("%d") else "month first"
    assert order in panel.health.date_rule
    assert ("two-digit" in panel.health.date_rule) == fmt.endswith("%y")
    assert panel.health.to_dict()["date_rule"] == panel.health.date_rule


@pytest.mark.parametrize(("reader", "name"), READERS)
@pytest.mark.parametrize(
    ("minority", "rows"),
    [("%d/%m/%Y", [3, 4, 20]), ("%d %B %Y", [7]), ("%Y%m%d", [0, 41])],
    ids=["day-first rows", "month names", "compact"],
)
def test_a_column_mixing_layouts_is_refused_naming_the_minority(
    minority, rows, reader, name, tmp_path
):
    bars = make_bars(symbols=("AAA", "BBB"), num_days=30)
    dates = pd.to_datetime(bars["date"]).dt.strftime("%Y-%m-%d").to_numpy(dtype=object)
    for r in rows:
        dates[r] = pd.Timestamp(bars["date"].iloc[r]).strftime(minority)
    path = _write(bars, tmp_path / name, dates)
    with pytest.raises(RelcastDataError, match=r"mixes date layouts") as err:
        _read(reader, path, tmp_path)
    message = str(err.value)
    assert f"in {len(rows)} row(s)" in message
    assert f"date={dates[rows[0]]}" in message


def test_text_dates_in_two_formats_are_refused():
    from relcast.data.dates import DateFormatError, parse_date_text

    text = pd.Series(["Jan 31, 2024", "Feb 01, 2024", "Feb 02, 2024", "5 February 2024"])
    with pytest.raises(DateFormatError, match="mixes date formats") as err:
        parse_date_text(text)
    assert err.value.bad.tolist() == [False, False, False, True]


@pytest.mark.parametrize(("reader", "name"), READERS)
def test_a_few_rows_never_decide_the_day_month_order(reader, name, tmp_path):
    # 2021-03-01 .. 03-12 fit both orders; two rows (13th, 15th) alone would make the rest
    # day-first: refused naming them, read once the order is given
    bars = make_bars(symbols=("AAA",), num_days=11)
    dates = pd.to_datetime(bars["date"]).dt.strftime("%d/%m/%Y")
    path = _write(bars, tmp_path / name, dates)
    with pytest.raises(RelcastDataError, match=r"only because of 1 of 11.*data\.date_format"):
        _read(reader, path, tmp_path)
    panel = _read(reader, path, tmp_path, date_format="dayfirst")
    assert str(panel.dates[-1])[:10] == "2021-03-15"


@pytest.mark.parametrize(("reader", "name"), READERS)
@pytest.mark.parametrize("stray", ["09:30", "16:00"])
def test_a_stray_time_never_turns_a_daily_file_intraday(stray, reader, name, tmp_path):
    bars = make_bars(symbols=("AAA", "BBB"), num_days=40)
    dates = pd.to_datetime(bars["date"]).dt.strftime("%Y-%m-%d").to_numpy(dtype=object)
    extra = bars.iloc[[12]].assign(close=bars["close"].iloc[12] + 1)
    bars = pd.concat([bars, extra], ignore_index=True)
    dates = np.append(dates, dates[12] + " " + stray)
    path = _write(bars, tmp_path / name, dates)
    with pytest.raises(RelcastDataError, match=r"2 of 81 rows a trading day shared"):
        _read(reader, path, tmp_path)


def test_intraday_bars_stay_intraday(tmp_path):
    # the rule refuses a minority only: a file of real minute bars keeps its times
    bars = make_bars(symbols=("AAA",), num_days=5)
    day = pd.to_datetime(bars["date"]).dt.strftime("%Y-%m-%d")
    minutes = pd.concat([bars.assign(date=day + t) for t in (" 09:30", " 09:31")])
    minutes.to_csv(tmp_path / "m.csv", index=False)
    panel = read_panel(tmp_path / "m.csv")
    assert panel.num_dates == 10 and "intraday" in panel.health.date_rule


def test_per_symbol_files_may_each_have_their_own_layout(tmp_path):
    bars = make_bars(symbols=("AAA", "BBB"), num_days=30)
    folder = tmp_path / "bars"
    folder.mkdir()
    for sym, fmt in (("AAA", "%Y-%m-%d"), ("BBB", "%d/%m/%y")):
        part = bars[bars["symbol"] == sym].drop(columns="symbol")
        part.assign(date=pd.to_datetime(part["date"]).dt.strftime(fmt)).to_csv(
            folder / f"{sym}.csv", index=False
        )
    panel = read_panel(folder)
    assert panel.num_dates == 30 and panel.mask.all()
    assert panel.health.date_rule.startswith("date: per file")


@pytest.mark.parametrize("bad", ["%Q", "%d/%m/%Y %:", "%Y-%m-%d %J"])
def test_a_bad_strftime_directive_is_a_configuration_error(bad, tmp_path):
    from typer.testing import CliRunner

    from relcast.cli import app
    from relcast.config import RelcastConfigError, load_config

    with pytest.raises(RelcastConfigError, match="strftime"):
        load_config(None, None, [f'data.date_format="{bad}"'])
    bars = make_bars(num_days=5)
    bars.to_csv(tmp_path / "b.csv", index=False)
    args = ["check", "--data", str(tmp_path / "b.csv"), "--set", f'data.date_format="{bad}"']
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
