"""Date text -> ``datetime64[ns]``, one explicit format per column, never a guess per row.

Rules (documented in README "Data health" and :func:`relcast.read_panel`):

* ``2024-01-31`` / ``2024/01/31`` / ``2024.01.31`` (year first, optional time) and
  ``20240131`` are unambiguous.
* ``31/01/2024`` (day or month first) is read with one order for the whole column: a first
  number above 12 proves day-first, a second number above 12 proves month-first; a column
  with both is refused, and a column where every date fits both orders is refused unless
  ``date_format`` says ``dayfirst``, ``monthfirst`` or gives a ``strftime`` format.
* A UTC offset (``16:00:00-05:00``, ``Z``) is dropped and the wall-clock time kept: the
  time as written is the exchange's local time, so its date is the trading date, also
  when the offset changes with daylight saving.

Parsing works on the distinct strings only (a daily column of a million rows holds a few
thousand), so it is fast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from relcast.data.panel import RelcastDataError

DATE_FORMAT_CHOICES = ("dayfirst", "monthfirst")

_TIME = r"(?:[ T](?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<frac>\.\d+)?)?)?"
_OFFSET = r"\s*(?:Z|UTC|[+-]\d{2}:?\d{2})?"
_YEAR_FIRST = rf"(?P<year>\d{{4}})[-/.](?P<a>\d{{1,2}})[-/.](?P<b>\d{{1,2}}){_TIME}{_OFFSET}"
_YEAR_LAST = rf"(?P<a>\d{{1,2}})[-/.](?P<b>\d{{1,2}})[-/.](?P<year>\d{{4}}){_TIME}{_OFFSET}"
_COMPACT = r"(?P<year>\d{4})(?P<a>\d{2})(?P<b>\d{2})"
# an offset right after a clock time (never the "-2018" of "02-01-2018")
_OFFSET_AFTER_TIME = r"(\d:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*(?:Z|UTC|[+-]\d{2}:?\d{2})$"


class DateFormatError(ValueError):
    """A date column that cannot be read with one format: which rows and how to choose."""

    def __init__(self, problem: str, bad: np.ndarray, fix: str) -> None:
        super().__init__(problem)
        self.problem, self.bad, self.fix = problem, bad, fix


def parse_date_text(
    text: pd.Series, date_format: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Date strings -> (``datetime64[ns] [R]`` with NaT where unreadable, ``date_only bool [R]``).

    ``date_only`` marks rows written without a clock time. Raises :class:`DateFormatError`
    for a column whose day/month order is mixed or cannot be told.
    """
    codes, uniques = pd.factorize(text, use_na_sentinel=True)  # strip the few distinct ones
    stripped = pd.Series(np.asarray(uniques, dtype=object), dtype="string").str.strip()
    again, uniques = pd.factorize(stripped, use_na_sentinel=True)
    codes = np.where(codes >= 0, again[np.maximum(codes, 0)], -1)
    uniques = pd.Series(np.asarray(uniques, dtype=object), dtype="string")
    try:
        parsed, date_only = _parse_unique(uniques, date_format)
    except DateFormatError as err:  # positions among distinct strings -> rows
        err.bad = (codes >= 0) & err.bad[np.maximum(codes, 0)]
        raise
    values = np.full(len(codes), np.datetime64("NaT"), dtype="datetime64[ns]")
    only = np.zeros(len(codes), dtype=bool)
    ok = codes >= 0
    values[ok] = parsed[codes[ok]]
    only[ok] = date_only[codes[ok]]
    return values, only


def _parse_unique(text: pd.Series, date_format: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Parse distinct strings; errors name positions in ``text`` (mapped back by the caller)."""
    out = np.full(len(text), np.datetime64("NaT"), dtype="datetime64[ns]")
    date_only = np.zeros(len(text), dtype=bool)
    if len(text) == 0:
        return out, date_only
    if date_format is not None and date_format not in DATE_FORMAT_CHOICES:
        # an explicit strftime format; offsets are dropped first (wall-clock = local time)
        fmt = date_format.replace("%z", "").replace("%Z", "").strip()
        wall = text.str.replace(_OFFSET_AFTER_TIME, r"\1", regex=True)
        out[:] = pd.to_datetime(wall, format=fmt, errors="coerce").to_numpy("datetime64[ns]")
        date_only[:] = not any(c in fmt for c in ("%H", "%I", "%M"))
        return out, date_only

    left = np.ones(len(text), dtype=bool)
    for pattern, order in ((_YEAR_FIRST, "ymd"), (_COMPACT, "ymd"), (_YEAR_LAST, "?")):
        parts = text.str.extract(f"^{pattern}$")
        hit = parts["year"].notna().to_numpy() & left
        if not hit.any():
            continue
        a = parts["a"].to_numpy()[hit].astype(np.int64)
        b = parts["b"].to_numpy()[hit].astype(np.int64)
        if order == "?":
            order = _day_month_order(text[hit], a, b, date_format, hit)
        month, day = (a, b) if order in ("ymd", "mdy") else (b, a)
        clock = {
            k: pd.to_numeric(parts[k], errors="coerce").to_numpy()[hit] if k in parts else None
            for k in ("hour", "minute", "second")
        }
        frame = {"year": parts["year"].to_numpy()[hit].astype(np.int64), "month": month, "day": day}
        for k, v in clock.items():
            frame[k] = np.nan_to_num(v, nan=0.0).astype(np.int64) if v is not None else 0
        stamp = pd.to_datetime(pd.DataFrame(frame), errors="coerce")
        if "frac" in parts:
            frac = pd.to_numeric(parts["frac"].to_numpy()[hit], errors="coerce")
            stamp = stamp + pd.to_timedelta(np.nan_to_num(np.asarray(frac, float)), unit="s")
        out[hit] = stamp.to_numpy("datetime64[ns]")
        date_only[hit] = parts["hour"].isna().to_numpy()[hit] if "hour" in parts else True
        left &= ~hit
    if left.any():  # month names and other free text: pandas, with the day-first choice
        rest = text[left].str.replace(_OFFSET_AFTER_TIME, r"\1", regex=True)
        stamp = pd.to_datetime(
            rest, errors="coerce", format="mixed", dayfirst=date_format == "dayfirst"
        )
        if isinstance(stamp.dtype, pd.DatetimeTZDtype):
            stamp = stamp.dt.tz_localize(None)
        out[left] = stamp.to_numpy("datetime64[ns]")
        date_only[left] = ~rest.str.contains(":", regex=False).fillna(False).to_numpy()
    return out, date_only


def _day_month_order(
    text: pd.Series, a: np.ndarray, b: np.ndarray, date_format: str | None, hit: np.ndarray
) -> str:
    """``"dmy"`` or ``"mdy"`` for ``A/B/YYYY`` dates, from the data or ``date_format``."""
    day_first = a > 12
    month_first = b > 12
    where = np.flatnonzero(hit)
    if day_first.any() and month_first.any():
        bad = np.zeros(len(hit), dtype=bool)
        bad[where[month_first]] = True
        eg_d, eg_m = text.iloc[int(np.argmax(day_first))], text.iloc[int(np.argmax(month_first))]
        raise DateFormatError(
            f"mixes day-first dates (e.g. {eg_d}) with month-first dates (e.g. {eg_m})",
            bad,
            "Write one date format in the whole column (best: 2024-01-31).",
        )
    if date_format == "dayfirst" or (date_format is None and day_first.any()):
        return "dmy"
    if date_format == "monthfirst" or (date_format is None and month_first.any()):
        return "mdy"
    bad = np.zeros(len(hit), dtype=bool)
    bad[where] = True
    return _ambiguous(text.iloc[0], bad)


def _ambiguous(example: str, bad: np.ndarray) -> str:
    raise DateFormatError(
        f"has dates like {example!r} that read both day-first and month-first",
        bad,
        "Say which: set data.date_format=dayfirst (31/01/2024) or data.date_format=monthfirst "
        "(01/31/2024), or a format such as data.date_format='%d/%m/%Y' "
        "(read_panel(..., date_format=...)).",
    )


def parse_date_column(
    raw: pd.DataFrame,
    column: str,
    source: str,
    date_format: str | None,
    symbols: pd.Series,
    *,
    daily: bool | None = None,
) -> np.ndarray:
    """A table's date column -> ``datetime64[ns]``: local wall-clock time, daily data by date.

    ``daily``: None = decide from the rows (date-times with at most one row per symbol and
    day are daily bars, kept by date); True / False = the caller decided (a block reader
    that sees the rows in parts, :mod:`relcast.data.blockread`).

    Raises :class:`RelcastDataError` naming the rows for unparseable, ambiguous or mixed dates.
    """
    from relcast.data.bars import row_message

    def shown(dates: object) -> pd.DataFrame:  # only built for a message (slow on 1M rows)
        return raw.assign(symbol=np.asarray(symbols), date=dates)

    values = raw[column]
    date_only = None
    if pd.api.types.is_datetime64_any_dtype(values) or _holds_dates(values):
        parsed = pd.to_datetime(values, errors="coerce")
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            parsed = parsed.dt.tz_localize(None)  # the wall-clock time in the stored zone
        parsed = parsed.to_numpy(dtype="datetime64[ns]")
    else:
        text = values.astype("string")
        if column == "date" and "time" in raw.columns:
            clock = raw["time"].astype("string").str.strip()
            if clock.str.contains(":", regex=False).any():  # separate date and clock columns
                text = text.str.strip() + " " + clock.fillna("")
        try:
            parsed, date_only = parse_date_text(text, date_format)
        except DateFormatError as err:
            rows = shown(text.to_numpy())
            message = row_message(source, rows, err.bad, column, err.problem, [], fix=err.fix)
            raise RelcastDataError(message) from None
    bad = np.isnat(parsed)
    if bad.any():
        raise RelcastDataError(
            row_message(
                source,
                shown(values.astype("string").to_numpy()),
                bad,
                column,
                "has unparseable or empty dates",
                [],
                fix="Write dates like 2024-01-31 or 2024-01-31 09:30:00 (or set "
                "data.date_format, e.g. '%d.%m.%Y').",
            )
        )
    day = parsed.astype("datetime64[D]")
    if (parsed == day).all():
        return parsed
    if daily is None:
        codes = pd.factorize(symbols)[0].astype(np.int64)
        days = day.view(np.int64)
        daily = not pd.Series(codes * (1 << 24) + (days - days.min())).duplicated().any()
    if daily:
        return day.astype("datetime64[ns]")  # daily bars (16:00 and 13:00 half-day closes)
    if date_only is not None and date_only.any():
        raise RelcastDataError(
            row_message(
                source,
                shown(parsed),
                date_only,
                column,
                "has date-only values among the date-times of intraday bars",
                [],
                fix="Give every row its time of day (e.g. 2024-01-31 09:30).",
            )
        )
    return parsed


def _holds_dates(values: pd.Series) -> bool:
    """An object column of ``datetime.date`` values (Parquet ``date32``)."""
    if values.dtype != object:
        return False
    first = values.dropna().head(1).tolist()
    return bool(first) and hasattr(first[0], "isoformat")
