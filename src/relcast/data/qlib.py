"""Read a qlib data folder (``calendars/day.txt``, ``instruments/*.txt``,
``features/<symbol>/<field>.day.bin``) into a long bar table, and write one from a panel
(:func:`write_qlib`, e.g. the bundled demo market for qlib's own workflows).

A ``.bin`` file is little-endian float32: the calendar index of the first value, then one
value per calendar date. qlib writes every field of a symbol over the same span, so a field
that starts elsewhere or holds fewer values than the symbol's others is a truncated or
damaged file: it is refused, never half-masked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from relcast.data.panel import OHLCV_FIELDS, Panel, RelcastDataError

QLIB_OPTIONAL_FIELDS = ("factor", "amount", "vwap", "change")
MAX_EXAMPLES = 5
STOCKS_MARKET = "stocks"
"""``instruments/stocks.txt``: the written panel's non-index symbols (a qlib ``market``)."""


def is_qlib_folder(path: Path) -> bool:
    return (path / "calendars").is_dir() and (path / "features").is_dir()


def read_qlib(folder: Path) -> pd.DataFrame:
    """A qlib data folder -> long frame (only rows inside each symbol's span)."""
    calendar = _read_calendar(folder)
    symbols = _read_instruments(folder)
    fields = list(OHLCV_FIELDS)
    for name in QLIB_OPTIONAL_FIELDS:
        if any((folder / "features" / s.lower() / f"{name}.day.bin").is_file() for s in symbols):
            fields.append(name)
    T = len(calendar)
    values = np.full((T, len(symbols), len(fields)), np.nan, dtype=np.float32)
    listed = np.zeros((T, len(symbols)), dtype=bool)
    for n, sym in enumerate(symbols):
        span: tuple[int, int, Path] | None = None  # (start, length, file) of the first field
        for k, name in enumerate(fields):
            file = folder / "features" / sym.lower() / f"{name}.day.bin"
            if not file.is_file():
                if name in OHLCV_FIELDS:
                    raise RelcastDataError(
                        f"{file}: missing column {name!r} for symbol {sym}; "
                        f"a qlib symbol needs {list(OHLCV_FIELDS)}.day.bin"
                    )
                continue
            start, series = _read_bin(file, name, T)
            if name in OHLCV_FIELDS and len(series):
                if span is None:
                    span = (start, len(series), file)
                elif (start, len(series)) != span[:2]:
                    raise RelcastDataError(
                        f"{file}: column {name!r} covers calendar index {start}.."
                        f"{start + len(series) - 1} ({len(series)} values), but "
                        f"{span[2].name} covers {span[0]}..{span[0] + span[1] - 1} "
                        f"({span[1]} values); the file looks truncated. Re-export symbol {sym} "
                        "(every field of a symbol must span the same dates)."
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


def _read_bin(file: Path, name: str, T: int) -> tuple[int, np.ndarray]:
    """``(start index, values)`` of one ``.bin`` file, validated against the calendar size."""
    size = file.stat().st_size
    if size % 4:
        raise RelcastDataError(
            f"{file}: column {name!r} has {size} bytes, not a whole number of float32 values; "
            "the file is truncated. Re-export it with qlib's dump_bin."
        )
    data = np.fromfile(file, dtype="<f4")
    if len(data) == 0:
        return 0, data
    first = float(data[0])
    if not np.isfinite(first) or first != int(first) or first < 0:
        raise RelcastDataError(
            f"{file}: column {name!r} starts with {first!r}, not a calendar index (the first "
            "float32 of a qlib .bin file is the index of its first date). Re-export the file."
        )
    start, series = int(first), data[1:]
    if start + len(series) > T:
        raise RelcastDataError(
            f"{file}: column {name!r} starts at calendar index {start} with "
            f"{len(series)} values, beyond the {T} dates of calendars/day.txt"
        )
    return start, series


def _read_calendar(folder: Path) -> np.ndarray:
    calendar_file = folder / "calendars" / "day.txt"
    if not calendar_file.is_file():
        raise RelcastDataError(f"{folder}: qlib folder without calendars/day.txt")
    lines = [s.strip() for s in calendar_file.read_text().splitlines() if s.strip()]
    calendar = pd.to_datetime(pd.Series(lines, dtype=object), errors="coerce", format="mixed")
    if calendar.isna().any():
        bad = np.flatnonzero(calendar.isna().to_numpy())[:MAX_EXAMPLES]
        examples = "; ".join(f"line {i + 1}: {lines[i]!r}" for i in bad)
        raise RelcastDataError(f"{calendar_file}: unparseable dates. Examples: {examples}")
    out = calendar.to_numpy(dtype="datetime64[ns]")
    if len(out) > 1 and not (np.diff(out) > np.timedelta64(0)).all():
        raise RelcastDataError(f"{calendar_file}: dates are not strictly increasing")
    return out


def _read_instruments(folder: Path) -> list[str]:
    inst_dir = folder / "instruments"
    inst_files = (
        [inst_dir / "all.txt"]
        if (inst_dir / "all.txt").is_file()
        else sorted(inst_dir.glob("*.txt"))
    )
    symbols: list[str] = []
    seen: set[str] = set()
    for file in inst_files:
        for line in file.read_text().splitlines():
            if line.strip():
                sym = line.split("\t")[0].strip()
                if sym not in seen:
                    seen.add(sym)
                    symbols.append(sym)
    if not symbols:  # no instruments file: every features/ sub-folder is a symbol
        symbols = sorted(p.name.upper() for p in (folder / "features").iterdir() if p.is_dir())
    return symbols


def write_qlib(panel: Panel, folder: str | Path) -> Path:
    """Write ``panel`` as a qlib data folder in qlib's own layout (what its ``dump_bin``
    writes), so qlib's expression engine, handlers and backtest read it.

    * ``calendars/day.txt``: the panel's dates, one ``YYYY-MM-DD`` a line;
    * ``instruments/all.txt``: ``SYMBOL<TAB>first<TAB>last`` traded date of every symbol, and
      ``instruments/stocks.txt`` the same for the non-index symbols (qlib's ``market: stocks``);
    * ``features/<symbol lower>/<field>.day.bin``: little-endian float32, the calendar index
      of the symbol's first traded date, then one value per date to its last (NaN where it
      did not trade in between). Fields: the panel's, plus ``factor`` = 1 (the bars are
      already adjusted, which is what qlib's factor 1 means) and ``change`` (close over the
      previous traded close, minus 1), which qlib's exchange reads.

    A symbol that never traded is left out. The folder must be empty or not exist: nothing
    there is overwritten. Returns the folder.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise RelcastDataError(f"{folder}: not empty; write_qlib writes into a new folder")
    if "close" not in panel.fields:
        raise RelcastDataError(f"write_qlib needs a close field, the panel has {panel.fields}")
    days = pd.DatetimeIndex(panel.dates).strftime("%Y-%m-%d")
    (folder / "calendars").mkdir(parents=True)
    (folder / "instruments").mkdir()
    (folder / "calendars" / "day.txt").write_text("\n".join(days) + "\n")
    close = panel.field("close")
    listed: dict[str, list[str]] = {"all": [], STOCKS_MARKET: []}
    for n, symbol in enumerate(panel.symbols):
        traded = np.flatnonzero(panel.mask[:, n])
        if len(traded) == 0:
            continue
        first, last = int(traded[0]), int(traded[-1])
        span = slice(first, last + 1)
        columns = {name: panel.values[span, n, k] for k, name in enumerate(panel.fields)}
        own_close = pd.Series(close[span, n]).ffill().to_numpy()
        columns["change"] = np.where(
            panel.mask[span, n], close[span, n] / np.r_[np.nan, own_close[:-1]] - 1, np.nan
        )
        columns["factor"] = np.where(panel.mask[span, n], 1.0, np.nan)
        target = folder / "features" / symbol.lower()
        target.mkdir(parents=True)
        for name, values in columns.items():
            values = np.where(panel.mask[span, n], values, np.nan)  # NaN where not traded
            data = np.concatenate([[first], values]).astype("<f4")
            data.tofile(target / f"{name}.day.bin")
        line = f"{symbol}\t{days[first]}\t{days[last]}"
        listed["all"].append(line)
        if not panel.is_index[n]:
            listed[STOCKS_MARKET].append(line)
    for market, lines in listed.items():
        (folder / "instruments" / f"{market}.txt").write_text("\n".join(lines) + "\n")
    return folder
