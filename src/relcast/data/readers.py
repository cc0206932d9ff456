"""Read market bars from the user's files into a :class:`~relcast.data.panel.Panel`.

Three layouts are understood, chosen by what ``path`` is:

* a long-format **CSV or Parquet file** with columns ``date, symbol, open, high, low,
  close, volume`` (optional ``amount`` and other numeric columns);
* a **folder of per-symbol CSV files**, one symbol per file (see :func:`symbols_from_files`
  for how a file name gives the symbol; :mod:`relcast.data.symbols`);
* a **qlib data folder** (``calendars/day.txt``, ``instruments/*.txt``,
  ``features/<symbol>/<field>.day.bin``), see :mod:`relcast.data.qlib`.

Dates are parsed by :mod:`relcast.data.dates` (one format per column, offsets -> local
time); structural problems stop with one :class:`~relcast.data.panel.RelcastDataError` that
names the file, the column and up to five example rows; isolated bad rows are masked or
repaired by :mod:`relcast.data.bars` and counted in ``panel.health``
(:class:`~relcast.data.health.DataHealth`). The user's files are only ever opened for reading.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from relcast.data.bars import (
    check_structure,
    clean_bars,
    count_gaps,
    row_message,
)
from relcast.data.dates import parse_date_column
from relcast.data.health import DataHealth
from relcast.data.panel import OHLCV_FIELDS, Panel, RelcastDataError
from relcast.data.qlib import is_qlib_folder, read_qlib
from relcast.data.symbols import CSV_SUFFIXES, symbols_from_files
from relcast.data.universe import SYMBOL_ALIASES, read_universe

DATE_ALIASES = ("date", "datetime", "timestamp", "time")
UNNAMED_INDEX = ("", "unnamed: 0")  # a pandas-written index column: the dates
PARQUET_SUFFIXES = (".parquet", ".pq")


# ---------------------------------------------------------------------------- public API
def read_panel(
    path: str | Path,
    universe: str | Path | pd.DataFrame | None = None,
    *,
    lookback: int | None = None,
    date_format: str | None = None,
    symbol_pattern: str | None = None,
    max_bad_fraction: float = 0.05,
    strict: bool = False,
) -> Panel:
    """Read OHLCV bars from ``path`` into a validated :class:`Panel` with a health account.

    Args:
        path: a long-format CSV/Parquet file, a folder of per-symbol CSV files or a qlib
            data folder. Column names are case-insensitive; the date column may be called
            ``date``, ``datetime``, ``timestamp`` or ``time``, or be an unnamed first
            column (``,Open,High,...``); a ``date`` column plus a ``time`` column of clock
            times (``09:35``) are combined. A UTC offset is dropped and the wall-clock time
            kept (the exchange's local time). Daily data (at most one row per symbol and
            calendar day) is keyed by the local trading date. Rows of a long file may come
            in any order; rows of a per-symbol file must be sorted by date. Extra numeric
            columns become extra fields; other text columns are ignored.
        universe: optional metadata (CSV/YAML/JSON file or DataFrame) with columns
            ``symbol, name, sector, market, is_index``; see :func:`read_universe`. Naming
            a symbol that is not in the data is an error; data symbols missing from the
            universe are kept with default metadata. Symbols follow the universe's order.
        lookback: if given, at least this many dates are required.
        date_format: ``None`` (detect, refuse ambiguous day/month columns), ``"dayfirst"``,
            ``"monthfirst"`` or a ``strftime`` format such as ``"%d/%m/%Y"``.
        symbol_pattern: per-symbol folders only: a file-name template such as
            ``"NASDAQ_{symbol}_30Y"`` (``*`` matches anything); default: see
            :func:`symbols_from_files`.
        max_bad_fraction: a symbol with more than this share of bad rows (non-positive or
            infinite prices, high < low, ...; suspensions and repaired rows not counted), or
            with no usable row, is excluded: dropped, warned about and listed in
            ``panel.health.excluded``; below it, bad rows are masked and counted.
        strict: refuse such a market instead of excluding the symbols (naming every one).

    Returns:
        A Panel whose dates are the union of all symbols' dates, with ``panel.health``. A
        (date, symbol) without a row, or whose open/high/low/close/volume is missing or was
        masked, is ``mask=False`` with NaN values - never zero prices.

    Raises:
        RelcastDataError: missing or doubled columns, unparseable or ambiguous dates,
            non-numbers, conflicting duplicate (date, symbol) rows, unsorted dates in a
            per-symbol file, a symbol with too many bad rows, a universe naming absent
            symbols, too few dates.
    """
    path = Path(path)
    if not path.exists():
        raise RelcastDataError(f"{path}: no such file or folder")
    source = str(path)
    if path.is_dir():
        if is_qlib_folder(path):
            frame = read_qlib(path)
        else:
            frame = _read_symbol_folder(path, symbol_pattern, date_format)
    else:
        frame = _read_long_table(path, has_suffix(path, PARQUET_SUFFIXES), date_format)
    health = DataHealth(source, date_rule=frame.attrs.get("date_rule", ""))
    frame = check_structure(frame, source, health)
    frame = clean_bars(frame, source, health, max_bad_fraction=max_bad_fraction, strict=strict)
    health.rows = len(frame)

    meta = None
    if universe is not None:
        meta = read_universe(universe)
        check_universe(meta, frame["symbol"].unique(), universe, path)
    panel = frame_to_panel(frame, meta, health)
    count_gaps(frame, panel.dates, health)
    if lookback is not None and panel.num_dates < lookback:
        raise RelcastDataError(
            f"{path}: column 'date' has {panel.num_dates} distinct dates, but lookback="
            f"{lookback} needs at least {lookback}. Provide more history or lower the lookback."
        )
    return panel


def check_universe(meta: pd.DataFrame, symbols, universe, path: Path) -> None:
    """Refuse a universe naming symbols absent from the data read from ``path``."""
    absent = sorted(set(meta["symbol"]) - set(symbols))
    if absent:
        where = universe if not isinstance(universe, pd.DataFrame) else "universe"
        raise RelcastDataError(
            f"{where}: column 'symbol' names {len(absent)} symbol(s) absent from the data "
            f"{path}: {absent[:20]}. Remove them from the universe or add their bars."
        )


def frame_to_panel(
    frame: pd.DataFrame, meta: pd.DataFrame | None = None, health: DataHealth | None = None
) -> Panel:
    """A validated long table -> Panel; rows with a missing OHLCV value become ``mask=False``.

    The calendar is the union of all rows' dates, so a date on which every symbol was
    suspended is kept (all masked).
    """
    fields = [c for c in frame.columns if not c.startswith("_") and c not in ("date", "symbol")]
    core = [f for f in OHLCV_FIELDS if f in fields]
    traded = frame[core].notna().all(axis=1).to_numpy()
    dates, t = np.unique(frame["date"].to_numpy(dtype="datetime64[ns]"), return_inverse=True)
    codes, uniques = pd.factorize(frame["symbol"], sort=True)  # fast on Arrow strings
    uniques = np.asarray(uniques, dtype=str)
    if meta is not None:
        present = set(uniques)
        order = [s for s in meta["symbol"] if s in present]
        order += [s for s in uniques if s not in set(order)]
    else:
        order = list(uniques)
    position = {s: i for i, s in enumerate(order)}
    n = np.array([position[s] for s in uniques], dtype=np.int64)[codes]
    values = np.full((len(dates), len(order), len(fields)), np.nan, dtype=np.float32)
    mask = np.zeros((len(dates), len(order)), dtype=bool)
    values[t[traded], n[traded]] = frame.loc[traded, fields].to_numpy(dtype=np.float32)
    mask[t[traded], n[traded]] = True
    return Panel(dates, np.array(order, dtype=str), tuple(fields), values, mask, meta, health)


# ---------------------------------------------------------------------------- readers
def _read_long_table(path: Path, parquet: bool, date_format: str | None) -> pd.DataFrame:
    """One long table (CSV or Parquet) -> standardised frame."""
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as err:
            raise RelcastDataError(f"{path}: not a readable Parquet file ({err})") from None
    else:
        table = _read_csv_table(path)
    raw = table.to_pandas()
    raw.columns = column_names(list(raw.columns), str(path))
    raw["_line"] = np.arange(len(raw)) + (2 if not parquet else 1)
    raw["_file"] = path.name
    return standardise(raw, str(path), "line" if not parquet else "row", date_format)


def _read_symbol_folder(
    folder: Path, symbol_pattern: str | None, date_format: str | None
) -> pd.DataFrame:
    """A folder of per-symbol CSV files (one symbol per file, sorted by date)."""
    import pyarrow as pa

    files = sorted(p for p in folder.iterdir() if p.is_file() and has_suffix(p, CSV_SUFFIXES))
    if not files:
        raise RelcastDataError(
            f"{folder}: no per-symbol files (*.csv) found, and it is not a qlib folder "
            "(calendars/ and features/ missing)"
        )
    symbols = symbols_from_files(files, symbol_pattern)
    tables = []
    for file in files:
        table = _read_csv_table(file)
        names = column_names(table.column_names, str(file))
        table = table.rename_columns(names)
        keep = [c for c in names if c not in SYMBOL_ALIASES]
        require_columns(keep, str(file), with_symbol=False)
        columns = {}
        for name in keep:
            col = table.column(name)
            if name in OHLCV_FIELDS and col.null_count == len(col) and len(col):
                raise RelcastDataError(
                    f"{file}: column {name!r} is empty in every row; fill it or remove the file"
                )
            if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
                col = col.cast(pa.float64())
            elif pa.types.is_null(col.type):
                col = col.cast(pa.float64() if name != "date" else pa.string())
            columns[name] = col
        tables.append(pa.table(columns))
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. numbers in one file, text in another
        text = [t.cast(pa.schema([(f.name, pa.string()) for f in t.schema])) for t in tables]
        table = pa.concat_tables(text, promote_options="permissive")
    raw = table.to_pandas()
    lengths = np.array([len(t) for t in tables])
    file_codes = np.repeat(np.arange(len(files)), lengths)
    order = np.argsort(np.asarray(symbols, dtype=str), kind="stable")
    rank = np.empty(len(files), dtype=np.int64)
    rank[order] = np.arange(len(files))
    raw["symbol"] = pd.Categorical.from_codes(
        rank[file_codes], categories=np.asarray(symbols, dtype=str)[order]
    )
    raw["_file"] = pd.Categorical.from_codes(file_codes, categories=[f.name for f in files])
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    raw["_line"] = np.arange(len(raw)) - starts + 2
    frame = standardise(raw, str(folder), "line", date_format)
    frame.attrs["sorted_within_file"] = True
    return frame


# ---------------------------------------------------------------------------- helpers
def _read_csv_table(path: Path):
    """Read a CSV with pyarrow, keeping date and symbol columns as text (so ``000001`` stays)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            header = stream.read(1 << 16).decode("utf-8-sig", errors="replace").splitlines()
        names = header[0].split(",") if header else []
        text_names = DATE_ALIASES + SYMBOL_ALIASES + UNNAMED_INDEX
        as_text = {
            name.strip('"'): pa.string()
            for name in names
            if name.strip().strip('"').lower() in text_names
        }
        return pacsv.read_csv(str(path), convert_options=pacsv.ConvertOptions(column_types=as_text))
    except (pa.ArrowException, OSError) as err:
        raise RelcastDataError(f"{path}: not a readable CSV file ({err})") from None


def column_names(names: list, source: str) -> list[str]:
    """Lower-cased names; an unnamed first column is the date; doubled names are an error."""
    lower = [str(c).strip().lower() for c in names]
    if lower and lower[0] in UNNAMED_INDEX and not any(c in DATE_ALIASES for c in lower):
        lower[0] = "date"
    seen: dict[str, str] = {}
    for original, name in zip(names, lower, strict=True):
        if name in seen:
            raise RelcastDataError(
                f"{source}: columns {seen[name]!r} and {str(original)!r} both name field "
                f"{name!r} (names are case-insensitive); keep one of them"
            )
        seen[name] = str(original)
    return lower


def require_columns(columns: list[str], source: str, *, with_symbol: bool) -> tuple:
    """The date and symbol column names among ``columns``; an error naming what is missing."""
    date_col = next((c for c in DATE_ALIASES if c in columns), None)
    symbol_col = next((c for c in SYMBOL_ALIASES if c in columns), None) if with_symbol else ""
    missing = [f for f in OHLCV_FIELDS if f not in columns]
    if symbol_col is None:
        missing.insert(0, "symbol")
    if date_col is None:
        missing.insert(0, "date")
    if missing:
        found = [c for c in columns if not c.startswith("_")]
        raise RelcastDataError(
            f"{source}: missing column(s) {missing}; found columns {found}; needed "
            f"date (or datetime/timestamp/time), "
            f"{'symbol, ' if with_symbol else ''}{', '.join(OHLCV_FIELDS)}"
        )
    return date_col, symbol_col


def standardise(
    raw: pd.DataFrame, source: str, row_word: str, date_format: str | None, whole: bool = True
) -> pd.DataFrame:
    """Pick the date/symbol columns, parse dates and numbers -> ``date, symbol, <fields>``.

    ``whole=False``: ``raw`` is one block of a larger table (:mod:`relcast.data.blockread`),
    so a column empty in every row of the block is no error here (the caller checks the table).
    """
    raw.attrs["row_word"] = row_word
    columns = [c for c in raw.columns if not c.startswith("_")]
    date_col, symbol_col = require_columns(columns, source, with_symbol=True)
    if isinstance(raw[symbol_col].dtype, pd.CategoricalDtype):
        symbols = raw[symbol_col]  # per-symbol folders: from the file names
    else:
        column = raw[symbol_col]
        no_symbol = (column.isna() | column.astype(str).str.strip().eq("")).to_numpy()
        if no_symbol.any():
            raise RelcastDataError(
                row_message(
                    source,
                    raw.assign(date=raw[date_col], symbol=""),
                    no_symbol,
                    symbol_col,
                    "is empty",
                    [],
                    fix="Give every row a symbol.",
                )
            )
        symbols = pd.Series(clean_symbols(column), index=raw.index)
    rules: dict[str, str] = {}
    dates = parse_date_column(raw, date_col, source, date_format, symbols, rules=rules)
    out = pd.DataFrame({"date": dates})
    out["symbol"] = symbols.to_numpy() if not hasattr(symbols, "cat") else symbols.values
    extras = [
        c
        for c in columns
        if c not in (date_col, symbol_col, *OHLCV_FIELDS) and c not in DATE_ALIASES + SYMBOL_ALIASES
    ]
    shown = raw.assign(date=out["date"].to_numpy(), symbol=out["symbol"].to_numpy())
    for name in [*OHLCV_FIELDS, *extras]:
        column = raw[name]
        if pd.api.types.is_bool_dtype(column):
            if name in OHLCV_FIELDS:
                raise RelcastDataError(
                    f"{source}: column {name!r} holds true/false values, not numbers; "
                    f"write the {name} as numbers"
                )
            out[name] = column.astype(np.float64).to_numpy()  # a flag field: 0/1
            continue
        numbers = pd.to_numeric(column, errors="coerce")
        text_bad = (numbers.isna() & column.notna()).to_numpy()
        if name in extras and text_bad.all():
            continue  # a text column (e.g. a name): not a field
        if text_bad.any():
            raise RelcastDataError(
                row_message(
                    source, shown, text_bad, name, "has values that are not numbers", [name]
                )
            )
        if whole and name in OHLCV_FIELDS and len(numbers) and numbers.isna().all():
            raise RelcastDataError(
                f"{source}: column {name!r} is empty in every row; fill it with numbers"
            )
        out[name] = numbers.to_numpy(dtype=np.float64)
    out["_file"] = raw["_file"].to_numpy() if "_file" in raw else ""
    out["_line"] = raw["_line"].to_numpy() if "_line" in raw else 0
    out.attrs["row_word"] = row_word
    out.attrs["date_rule"] = f"{date_col}: {rules.get(date_col, '')}"
    return out


def clean_symbols(column: pd.Series) -> pd.Categorical:
    """Symbols as stripped text, stored as a categorical (fast for millions of rows)."""
    codes, uniques = pd.factorize(column, use_na_sentinel=False)
    stripped = pd.Index(uniques).astype(str).str.strip()
    cats, remap = np.unique(np.asarray(stripped, dtype=str), return_inverse=True)
    return pd.Categorical.from_codes(remap[codes], categories=cats)


def has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    """Whether ``path``'s name ends with one of ``suffixes`` (case-insensitive)."""
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)
