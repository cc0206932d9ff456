"""One bad symbol never stops a market (issue #27, class 4): a symbol over
``data.max_bad_fraction`` (repaired rows not counted) or without a usable row is excluded
loudly (every cell masked, a warning, listed in the health account and by ``relcast check``),
every such symbol is listed, and ``data.strict: true`` refuses instead. Both readers."""

from __future__ import annotations

import numpy as np
import pytest
from test_readers import make_bars, write_qlib
from typer.testing import CliRunner

from relcast.cli import app
from relcast.data.blockread import read_panel_to_memmap
from relcast.data.panel import RelcastDataError
from relcast.data.readers import read_panel

SYMBOLS = tuple(f"S{k:02d}" for k in range(8))


def _read(reader: str, path, tmp_path, **kw):
    if reader == "memmap":
        return read_panel_to_memmap(path, tmp_path / "values.npy", block_rows=90, **kw)
    return read_panel(path, **kw)


def _market(tmp_path, broken: dict[str, str], days: int = 60) -> str:
    """A clean market where each symbol in ``broken`` has a third of its rows bad."""
    bars = make_bars(symbols=SYMBOLS, num_days=days)
    for sym, kind in broken.items():
        rows = np.flatnonzero(bars["symbol"].eq(sym).to_numpy())[::3]
        if kind == "high_below_low":
            bars.loc[rows, "high"] = bars.loc[rows, "low"] - 1
        elif kind == "nonpositive_price":
            bars.loc[rows, "close"] = -1.0
        elif kind == "open_zero_everywhere":
            bars.loc[bars["symbol"].eq(sym), "open"] = 0.0
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path, index=False)
    return str(path)


READERS = ["read_panel", "memmap"]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(
    "broken",
    [
        {"S03": "high_below_low"},
        {"S01": "nonpositive_price", "S05": "high_below_low", "S07": "nonpositive_price"},
        {"S02": "open_zero_everywhere"},
    ],
    ids=["one symbol", "three symbols", "open 0 on every row"],
)
def test_broken_symbols_are_excluded_the_rest_is_read(broken, reader, tmp_path):
    path = _market(tmp_path, broken)
    (tmp_path / "clean").mkdir()
    clean = read_panel(_market(tmp_path / "clean", {}))
    with pytest.warns(UserWarning, match=f"{len(broken)} symbol\\(s\\) excluded"):
        panel = _read(reader, path, tmp_path)
    assert sorted(panel.health.excluded) == sorted(broken)  # every one, not the first
    assert list(panel.symbols) == list(SYMBOLS)  # kept in the market, out of every step
    out = np.isin(panel.symbols, list(broken))
    assert not panel.mask[:, out].any() and np.isnan(panel.values[:, out]).all()
    # every other symbol exactly as in a market without the broken ones
    assert np.array_equal(panel.mask[:, ~out], clean.mask[:, ~out])
    assert np.array_equal(panel.values[:, ~out], clean.values[:, ~out], equal_nan=True)
    assert sorted(panel.health.to_dict()["excluded"]) == sorted(broken)
    assert "excluded" in panel.health.table() and all(s in panel.health.table() for s in broken)


@pytest.mark.parametrize("reader", READERS)
def test_strict_refuses_naming_every_broken_symbol(reader, tmp_path):
    broken = {"S01": "nonpositive_price", "S05": "high_below_low", "S07": "nonpositive_price"}
    path = _market(tmp_path, broken)
    with pytest.raises(RelcastDataError, match=r"3 symbol\(s\) like this: S01, S05, S07"):
        _read(reader, path, tmp_path, strict=True)


@pytest.mark.parametrize("reader", READERS)
def test_strict_refuses_a_symbol_without_a_usable_row(reader, tmp_path):
    path = _market(tmp_path, {"S02": "open_zero_everywhere"})
    with pytest.raises(RelcastDataError, match="S02"):
        _read(reader, path, tmp_path, strict=True)


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("share", [0.09, 0.5, 1.0])
def test_repaired_rows_do_not_count_toward_the_threshold(share, reader, tmp_path):
    # high below close on a share of one symbol's rows: relcast widens high, the symbol stays
    bars = make_bars(symbols=SYMBOLS, num_days=60)
    rows = np.flatnonzero(bars["symbol"].eq("S04").to_numpy())
    rows = rows[: int(round(share * len(rows)))]
    bars.loc[rows, "high"] = np.minimum(bars.loc[rows, "open"], bars.loc[rows, "close"])
    bars.loc[rows, "close"] = bars.loc[rows, "high"] + 0.125  # high < close, high >= low
    bars.loc[rows, "low"] = np.minimum(bars.loc[rows, "low"], bars.loc[rows, "high"])
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path, index=False)
    panel = _read(reader, path, tmp_path)
    assert not panel.health.excluded and panel.mask.all()
    assert panel.health.counts["high_low_range"]["S04"] == len(rows)


def test_relcast_check_lists_every_excluded_symbol_and_strict_stops(tmp_path):
    path = _market(tmp_path, {"S01": "nonpositive_price", "S06": "high_below_low"})
    result = CliRunner().invoke(app, ["check", "--data", path])
    assert result.exit_code == 0, result.output
    assert "excluded 2 symbol(s)" in result.output
    assert "S01:" in result.output and "S06:" in result.output
    result = CliRunner().invoke(app, ["check", "--data", path, "--set", "data.strict=true"])
    assert result.exit_code == 2 and "S01, S06" in result.output


def test_an_empty_qlib_field_file_is_refused(tmp_path):
    bars = make_bars(symbols=("SH600000", "SZ000001"))
    write_qlib(tmp_path / "qlib", bars, starts={})
    (tmp_path / "qlib" / "features" / "sh600000" / "open.day.bin").write_bytes(b"")
    with pytest.raises(RelcastDataError, match=r"open\.day\.bin.*0 bytes.*truncated"):
        read_panel(tmp_path / "qlib")
