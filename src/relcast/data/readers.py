"""Read market bars from the user's files into a :class:`~relcast.data.panel.Panel`.

Three layouts are understood, chosen by what ``path`` is:

* a long-format **CSV or Parquet file** with columns ``date, symbol, open, high, low,
  close, volume`` (optional ``amount`` and other numeric columns);
* a **folder of per-symbol CSV files** ``<SYMBOL>.csv`` (the symbol is the file name);
* a **qlib data folder** (``calendars/day.txt``, ``instruments/*.txt``,
  ``features/<symbol>/<field>.day.bin``).

Everything is validated at this boundary; bad input raises one
:class:`~relcast.data.panel.RelcastDataError` that names the file, the column and up to
five example rows. The user's files are only ever opened for reading.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from relcast.data.panel import (
    META_COLUMNS,
    OHLCV_FIELDS,
    PRICE_FIELDS,
    Panel,
    RelcastDataError,
)

log = logging.getLogger(__name__)

DATE_ALIASES = ("date", "datetime", "timestamp", "time")
SYMBOL_ALIASES = ("symbol", "ticker", "instrument")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
QLIB_OPTIONAL_FIELDS = ("factor", "amount", "vwap", "change")
MAX_EXAMPLES = 5


# ---------------------------------------------------------------------------- public API
def read_panel(
    path: str | Path,
    universe: str | Path | pd.DataFrame | None = None,
    *,
    lookback: int | None = None,
) -> Panel:
    """Read OHLCV bars from ``path`` into a validated :class:`Panel`.

    Args:
        path: a long-format CSV/Parquet file, a folder of ``<SYMBOL>.csv`` files or a qlib
            data folder. Column names are case-insensitive; the date column may be called
            ``date``, ``datetime``, ``timestamp`` or ``time`` and may hold daily dates or
            intraday timestamps (time zones are dropped, wall-clock time is kept); a
            ``date`` column plus a ``time`` column of clock times (``09:35``) are combined. Rows of
            a long file may come in any order; rows of a per-symbol file must be sorted by
            date. Extra numeric columns become extra fields; other text columns are ignored.
        universe: optional metadata (CSV/YAML/JSON file or DataFrame) with columns
            ``symbol, name, sector, market, is_index``; see :func:`read_universe`. Naming
            a symbol that is not in the data is an error; data symbols missing from the
            universe are kept with default metadata. Symbols follow the universe's order.
        lookback: if given, at least this many dates are required.

    Returns:
        A Panel whose dates are the union of all symbols' dates. A (date, symbol) without
        a row, or whose open/high/low/close/volume has a missing value (a suspension), is
        ``mask=False`` with NaN values - never zero prices.

    Raises:
        RelcastDataError: missing columns, unparseable dates or numbers, duplicate
            (date, symbol) rows, unsorted dates in a per-symbol file, non-positive prices,
            inconsistent high/low, a universe naming absent symbols, too few dates.
    """
    path = Path(path)
    if not path.exists():
        raise RelcastDataError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "calendars").is_dir() and (path / "features").is_dir():
            frame = _read_qlib(path)
        else:
            frame = _read_symbol_folder(path)
    elif _has_suffix(path, PARQUET_SUFFIXES):
        frame = _read_long_table(path, parquet=True)
    else:
        frame = _read_long_table(path, parquet=False)
    validate_bars(frame, str(path))

    meta = None
    if universe is not None:
        meta = read_universe(universe)
        absent = sorted(set(meta["symbol"]) - set(frame["symbol"].unique()))
        if absent:
            where = universe if not isinstance(universe, pd.DataFrame) else "universe"
            raise RelcastDataError(
                f"{where}: column 'symbol' names {len(absent)} symbol(s) absent from the data "
                f"{path}: {absent[:20]}. Remove them from the universe or add their bars."
            )
    panel = frame_to_panel(frame, meta)
    if lookback is not None and panel.num_dates < lookback:
        raise RelcastDataError(
            f"{path}: column 'date' has {panel.num_dates} distinct dates, but lookback="
            f"{lookback} needs at least {lookback}. Provide more history or lower the lookback."
        )
    return panel


def read_universe(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Per-symbol metadata from a CSV/YAML/JSON file or DataFrame.

    Only ``symbol`` is required; ``name, sector, market, is_index`` default to the symbol,
    ``"unknown"``, ``"unknown"`` and False. YAML/JSON may be a list of records, a mapping
    ``{symbol: {sector: ..., ...}}`` or ``{"symbols": [records]}``.
    """
    where = "universe" if isinstance(source, pd.DataFrame) else str(source)
    if isinstance(source, pd.DataFrame):
        frame = source.copy()
    else:
        path = Path(source)
        if not path.is_file():
            raise RelcastDataError(f"{path}: universe file not found")
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml", ".json"):
            text = path.read_text()
            if suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
            frame = _records_to_frame(data, where)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if "symbol" not in frame.columns:
        for alias in SYMBOL_ALIASES[1:]:
            if alias in frame.columns:
                frame = frame.rename(columns={alias: "symbol"})
                break
        else:
            raise RelcastDataError(
                f"{where}: missing column 'symbol'; found columns {list(frame.columns)}; "
                f"a universe needs 'symbol' and optionally {list(META_COLUMNS[1:])}"
            )
    frame["symbol"] = frame["symbol"].astype(str).str.strip()
    duplicated = frame["symbol"].duplicated(keep=False)
    if duplicated.any():
        raise RelcastDataError(
            f"{where}: column 'symbol' lists {sorted(set(frame.loc[duplicated, 'symbol']))[:5]} "
            "more than once; keep one row per symbol"
        )
    out = pd.DataFrame({"symbol": frame["symbol"].to_numpy()})
    for col, default in (("name", None), ("sector", "unknown"), ("market", "unknown")):
        if col in frame.columns:
            values = frame[col].astype(object).where(frame[col].notna(), None)
            values = [None if v in (None, "") else str(v) for v in values]
        else:
            values = [None] * len(frame)
        fill = out["symbol"] if default is None else [default] * len(frame)
        out[col] = [v if v is not None else f for v, f in zip(values, fill, strict=True)]
    out["is_index"] = (
        [_to_bool(v, where) for v in frame["is_index"]] if "is_index" in frame.columns else False
    )
    return out[list(META_COLUMNS)]


def validate_bars(frame: pd.DataFrame, source: str, *, sorted_within_file: bool = False) -> None:
    """Raise :class:`RelcastDataError` at the first problem found in a long bar table.

    ``frame`` holds ``date, symbol, <fields>`` plus the bookkeeping columns ``_file``
    (file name per row) and ``_line`` (1-based line number, header = 1; 0 if unknown).
    Duplicate (date, symbol) rows are checked first, then date order within each file
    (per-symbol files, ``sorted_within_file``), then prices via :func:`bad_bar_checks`.
    """
    dup = frame.duplicated(["date", "symbol"], keep=False).to_numpy()
    if dup.any():
        raise RelcastDataError(
            _row_message(
                source,
                frame,
                dup,
                "date",
                "has duplicate (date, symbol) rows",
                ["date", "symbol"],
                fix="Keep one bar per symbol and date.",
            )
        )
    if frame.attrs.get("sorted_within_file", sorted_within_file):
        prev_date = frame["date"].shift(1)
        same_file = frame["_file"].eq(frame["_file"].shift(1))
        unsorted = (same_file & (frame["date"] <= prev_date)).to_numpy()
        if unsorted.any():
            raise RelcastDataError(
                _row_message(
                    source,
                    frame,
                    unsorted,
                    "date",
                    "is not sorted (each row must come after a later date than the one above)",
                    ["date"],
                    fix="Sort each per-symbol file by date.",
                )
            )
    for column, problem, bad, shown in bad_bar_checks(frame):
        raise RelcastDataError(_row_message(source, frame, bad, column, problem, shown))


def bad_bar_checks(frame: pd.DataFrame) -> list[tuple[str, str, np.ndarray, list[str]]]:
    """Rows with impossible prices: ``[(column, problem, bad_rows bool [R], shown_columns)]``.

    Checked on rows whose prices are all present (missing prices mean a suspension):
    non-positive open/high/low/close, negative volume, ``high < low``,
    ``high < max(open, close)`` and ``low > min(open, close)``. Empty list = clean.
    """
    prices = frame[list(PRICE_FIELDS)].to_numpy(dtype=np.float64)
    present = np.isfinite(prices).all(axis=1)
    found = []
    for k, name in enumerate(PRICE_FIELDS):
        bad = present & (prices[:, k] <= 0)
        if bad.any():
            found.append((name, "has non-positive prices (must be > 0)", bad, [name]))
    if "volume" in frame.columns:
        volume = frame["volume"].to_numpy(dtype=np.float64)
        bad = volume < 0  # NaN compares False
        if bad.any():
            found.append(("volume", "has negative volume", bad, ["volume"]))
    o, h, l, c = prices.T
    with np.errstate(invalid="ignore"):
        checks = (
            ("high", "is below column 'low'", present & (h < l), ["high", "low"]),
            (
                "high",
                "is below max(open, close)",
                present & (h < np.maximum(o, c)),
                ["open", "high", "close"],
            ),
            (
                "low",
                "is above min(open, close)",
                present & (l > np.minimum(o, c)),
                ["open", "low", "close"],
            ),
        )
    found += [check for check in checks if check[2].any()]
    return found


def frame_to_panel(frame: pd.DataFrame, meta: pd.DataFrame | None = None) -> Panel:
    """A validated long table -> Panel; rows with a missing OHLCV value become ``mask=False``.

    The calendar is the union of all rows' dates, so a date on which every symbol was
    suspended is kept (all masked).
    """
    fields = [c for c in frame.columns if not c.startswith("_") and c not in ("date", "symbol")]
    core = [f for f in OHLCV_FIELDS if f in fields]
    traded = frame[core].notna().all(axis=1).to_numpy()
    partial = (~traded) & frame[core].notna().any(axis=1).to_numpy()
    if partial.any():
        log.warning(
            "%d rows miss some of %s: treated as not traded (mask=False)", int(partial.sum()), core
        )
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
    return Panel(dates, np.array(order, dtype=str), tuple(fields), values, mask, meta)


# ---------------------------------------------------------------------------- readers
def _read_long_table(path: Path, *, parquet: bool) -> pd.DataFrame:
    """One long table (CSV or Parquet) -> raw validated-columns frame."""
    if parquet:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    else:
        table = _read_csv_table(path)
    raw = table.to_pandas()
    raw["_line"] = np.arange(len(raw)) + (2 if not parquet else 1)
    raw["_file"] = path.name
    return _standardise(raw, str(path), row_word="line" if not parquet else "row")


def _read_symbol_folder(folder: Path) -> pd.DataFrame:
    """A folder of ``<SYMBOL>.csv`` files (one symbol per file, sorted by date)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and _has_suffix(p, CSV_SUFFIXES))
    if not files:
        raise RelcastDataError(
            f"{folder}: no per-symbol files (*.csv) found, and it is not a qlib folder "
            "(calendars/ and features/ missing)"
        )
    frames = []
    for file in files:
        raw = _read_csv_table(file).to_pandas()
        raw = raw.drop(columns=[c for c in raw.columns if str(c).strip().lower() in SYMBOL_ALIASES])
        raw["symbol"] = file.name.split(".")[0]
        raw.attrs["added"] = ("symbol",)
        raw["_line"] = np.arange(len(raw)) + 2
        raw["_file"] = file.name
        frames.append(_standardise(raw, str(file), row_word="line"))
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs["sorted_within_file"] = True
    return frame


def _read_qlib(folder: Path) -> pd.DataFrame:
    """A qlib data folder -> long frame (only traded or NaN rows inside each symbol's span)."""
    calendar_file = folder / "calendars" / "day.txt"
    if not calendar_file.is_file():
        raise RelcastDataError(f"{folder}: qlib folder without calendars/day.txt")
    lines = [s.strip() for s in calendar_file.read_text().splitlines() if s.strip()]
    calendar = pd.to_datetime(pd.Series(lines), errors="coerce")
    if calendar.isna().any():
        bad = np.flatnonzero(calendar.isna().to_numpy())[:MAX_EXAMPLES]
        examples = "; ".join(f"line {i + 1}: {lines[i]!r}" for i in bad)
        raise RelcastDataError(f"{calendar_file}: unparseable dates. Examples: {examples}")
    calendar = calendar.to_numpy(dtype="datetime64[ns]")

    inst_dir = folder / "instruments"
    inst_files = (
        [inst_dir / "all.txt"]
        if (inst_dir / "all.txt").is_file()
        else sorted(inst_dir.glob("*.txt"))
    )
    symbols: list[str] = []
    for file in inst_files:
        for line in file.read_text().splitlines():
            if line.strip():
                sym = line.split("\t")[0].strip()
                if sym not in symbols:
                    symbols.append(sym)
    if not symbols:  # no instruments file: every features/ sub-folder is a symbol
        symbols = sorted(p.name.upper() for p in (folder / "features").iterdir() if p.is_dir())

    fields = list(OHLCV_FIELDS)
    for name in QLIB_OPTIONAL_FIELDS:
        if any((folder / "features" / s.lower() / f"{name}.day.bin").is_file() for s in symbols):
            fields.append(name)
    T = len(calendar)
    values = np.full((T, len(symbols), len(fields)), np.nan, dtype=np.float32)
    listed = np.zeros((T, len(symbols)), dtype=bool)
    for n, sym in enumerate(symbols):
        sym_dir = folder / "features" / sym.lower()
        for k, name in enumerate(fields):
            file = sym_dir / f"{name}.day.bin"
            if not file.is_file():
                if name in OHLCV_FIELDS:
                    raise RelcastDataError(
                        f"{file}: missing column {name!r} for symbol {sym}; "
                        f"a qlib symbol needs {list(OHLCV_FIELDS)}.day.bin"
                    )
                continue
            data = np.fromfile(file, dtype="<f4")
            if len(data) == 0:
                continue
            start = int(data[0])
            series = data[1:]
            if start < 0 or start + len(series) > T:
                raise RelcastDataError(
                    f"{file}: column {name!r} starts at calendar index {start} with "
                    f"{len(series)} values, beyond the {T} dates of calendars/day.txt"
                )
            values[start : start + len(series), n, k] = series
            listed[start : start + len(series), n] = True
    t, n = np.nonzero(listed)
    frame = pd.DataFrame({"date": calendar[t], "symbol": np.array(symbols, dtype=str)[n]})
    for k, name in enumerate(fields):
        frame[name] = values[t, n, k].astype(np.float64)
    frame["_file"] = [f"features/{s.lower()}" for s in np.array(symbols)[n]]
    frame["_line"] = 0
    return frame


# ---------------------------------------------------------------------------- helpers
def _read_csv_table(path: Path):
    """Read a CSV with pyarrow, keeping date and symbol columns as text (so ``000001`` stays)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with pa.input_stream(str(path), compression="detect") as stream:
        header = stream.read(1 << 16).decode("utf-8-sig", errors="replace").splitlines()
    names = header[0].split(",") if header else []
    as_text = {
        name: pa.string()
        for name in names
        if name.strip().strip('"').lower() in DATE_ALIASES + SYMBOL_ALIASES
    }
    try:
        return pacsv.read_csv(str(path), convert_options=pacsv.ConvertOptions(column_types=as_text))
    except pa.ArrowInvalid as err:
        raise RelcastDataError(f"{path}: not a readable CSV file ({err})") from None


def _standardise(raw: pd.DataFrame, source: str, *, row_word: str) -> pd.DataFrame:
    """Lower-case names, pick the date/symbol columns, parse dates and numbers."""
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    date_col = next((c for c in DATE_ALIASES if c in raw.columns), None)
    symbol_col = next((c for c in SYMBOL_ALIASES if c in raw.columns), None)
    missing = [f for f in OHLCV_FIELDS if f not in raw.columns]
    if date_col is None:
        missing.insert(0, "date")
    if symbol_col is None:
        missing.insert(1 if date_col is None else 0, "symbol")
    if missing:
        added = raw.attrs.get("added", ())
        found = [c for c in raw.columns if not c.startswith("_") and c not in added]
        raise RelcastDataError(
            f"{source}: missing column(s) {missing}; found columns {found}; needed "
            f"date (or datetime/timestamp/time), symbol, {', '.join(OHLCV_FIELDS)}"
        )
    no_symbol = (raw[symbol_col].isna() | raw[symbol_col].astype(str).str.strip().eq("")).to_numpy()
    if no_symbol.any():
        raise RelcastDataError(
            _row_message(
                source,
                raw.assign(date=raw[date_col], symbol=""),
                no_symbol,
                symbol_col,
                "is empty",
                [],
                row_word=row_word,
                fix="Give every row a symbol.",
            )
        )
    out = pd.DataFrame(
        {
            "date": _parse_dates(raw, date_col, source, row_word),
            "symbol": _clean_symbols(raw[symbol_col]),
        }
    )
    extras = [
        c
        for c in raw.columns
        if c not in (date_col, symbol_col, *OHLCV_FIELDS, "_file", "_line")
        and c not in DATE_ALIASES + SYMBOL_ALIASES
    ]
    for name in [*OHLCV_FIELDS, *extras]:
        column = raw[name]
        if pd.api.types.is_bool_dtype(column):
            continue
        numbers = pd.to_numeric(column, errors="coerce")
        text_bad = (numbers.isna() & column.notna()).to_numpy()
        if name in extras and text_bad.all():
            continue  # a text column (e.g. a name): not a field
        if text_bad.any():
            raise RelcastDataError(
                _row_message(
                    source,
                    raw.assign(date=out["date"], symbol=out["symbol"]),
                    text_bad,
                    name,
                    "has values that are not numbers",
                    [name],
                    row_word=row_word,
                )
            )
        out[name] = numbers.to_numpy(dtype=np.float64)
    out["_file"] = raw["_file"].to_numpy()
    out["_line"] = raw["_line"].to_numpy()
    out.attrs["row_word"] = row_word
    return out


def _clean_symbols(column: pd.Series) -> pd.Categorical:
    """Symbols as stripped text, stored as a categorical (fast for millions of rows)."""
    codes, uniques = pd.factorize(column, use_na_sentinel=False)
    stripped = pd.Index(uniques).astype(str).str.strip()
    cats, remap = np.unique(np.asarray(stripped, dtype=str), return_inverse=True)
    return pd.Categorical.from_codes(remap[codes], categories=cats)


def _parse_dates(raw: pd.DataFrame, column: str, source: str, row_word: str) -> np.ndarray:
    """Text/number dates -> ``datetime64[ns]``; YYYYMMDD numbers are understood."""
    if pd.api.types.is_datetime64_any_dtype(raw[column]):  # e.g. Parquet timestamps
        parsed = pd.to_datetime(raw[column])
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            parsed = parsed.dt.tz_localize(None)
        if not parsed.isna().any():
            return parsed.to_numpy(dtype="datetime64[ns]")
    text = raw[column].astype("string").str.strip()
    if column == "date" and "time" in raw.columns:
        clock = raw["time"].astype("string").str.strip()
        if clock.str.contains(":", regex=False).any():  # separate date and clock-time columns
            text = text + " " + clock.fillna("")
    if text.str.fullmatch(r"\d{8}").fillna(False).all():
        parsed = pd.to_datetime(text, format="%Y%m%d", errors="coerce")
    else:
        parsed = pd.to_datetime(text, errors="coerce")
        if parsed.isna().any():
            parsed = pd.to_datetime(text, errors="coerce", format="mixed")
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_localize(None)  # keep the exchange's wall-clock time
    bad = parsed.isna().to_numpy()
    if bad.any():
        shown = raw.assign(date=text.to_numpy())
        if "symbol" not in shown.columns:
            shown["symbol"] = ""
        raise RelcastDataError(
            _row_message(
                source,
                shown,
                bad,
                column,
                "has unparseable or empty dates",
                [],
                fix="Write dates like 2024-01-31 or 2024-01-31 09:30:00.",
                row_word=row_word,
            )
        )
    return parsed.to_numpy(dtype="datetime64[ns]")


def _row_message(
    source: str,
    frame: pd.DataFrame,
    bad: np.ndarray,
    column: str,
    problem: str,
    shown: list[str],
    *,
    row_word: str | None = None,
    fix: str = "Fix or remove these rows.",
) -> str:
    """``"<file>: column 'x' <problem> in K row(s), e.g. line 4 (date=..., ...); ... <fix>"``."""
    row_word = row_word or frame.attrs.get("row_word", "line")
    rows = frame.loc[bad]
    if "_file" in rows.columns and "_line" in rows.columns:
        rows = rows.sort_values(["_file", "_line"], kind="stable")
    files = rows["_file"].unique() if "_file" in rows.columns else []
    many_files = len(files) > 1 or (len(files) == 1 and not source.endswith(str(files[0])))
    examples = []
    for _, row in rows.head(MAX_EXAMPLES).iterrows():
        line = int(row["_line"]) if "_line" in row and row["_line"] else 0
        where = " ".join(
            ([str(row["_file"])] if many_files else []) + ([f"{row_word} {line}"] if line else [])
        )
        date = row.get("date")
        if isinstance(date, pd.Timestamp | np.datetime64):
            date = pd.Timestamp(date).isoformat(sep=" ").removesuffix(" 00:00:00")
        parts = [f"date={date}", f"symbol={row.get('symbol', '')}"]
        parts += [f"{c}={_fmt(row[c])}" for c in shown if c not in ("date", "symbol")]
        examples.append(f"{where} ({', '.join(parts)})".strip())
    return (
        f"{source}: column {column!r} {problem} in {int(bad.sum())} row(s), "
        f"e.g. {'; '.join(examples)}. {fix}"
    )


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def _to_bool(value: object, where: str) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "t"):
        return True
    if text in ("0", "false", "no", "n", "f", ""):
        return False
    raise RelcastDataError(f"{where}: column 'is_index' has {value!r}; use true/false")


def _records_to_frame(data: object, where: str) -> pd.DataFrame:
    """YAML/JSON universe shapes -> DataFrame."""
    if isinstance(data, dict) and "symbols" in data and isinstance(data["symbols"], list):
        data = data["symbols"]
    if isinstance(data, dict):
        data = [{"symbol": k, **(v or {})} for k, v in data.items()]
    if isinstance(data, list):
        rows = [r if isinstance(r, dict) else {"symbol": r} for r in data]
        return pd.DataFrame(rows)
    raise RelcastDataError(
        f"{where}: expected a list of {{symbol, name, sector, market, is_index}} records"
    )
