"""Date text -> ``datetime64[ns]``, one explicit format per column, never a guess per row.

Rules (documented in README "Data health" and :func:`relcast.read_panel`):

* ``2024-01-31`` / ``2024/01/31`` / ``2024.01.31`` (year first, optional time) and
  ``20240131`` are unambiguous.
* ``31/01/2024`` and ``31/01/19`` (day or month first; a two-digit year is 19yy from 69 on,
  20yy below, as ``%y``) are read with one order for the whole column: a first number above
  12 proves day-first, a second number above 12 proves month-first; a column with both is
  refused, a column where every date fits both orders is refused unless ``date_format`` says
  ``dayfirst``, ``monthfirst`` or gives a ``strftime`` format, and so is a column where the
  proof is a minority (fewer than a quarter of its distinct dates) that would reorder the rest.
* One rule per column, chosen from the whole column (never a guess per row): a column that
  mixes layouts (``2024-01-31`` with ``31/01/2024``, or text dates in two formats) is refused,
  naming the rows in the minority layout. The rule is stated in the health account.
* A daily file stays daily: a minority of rows that share a (symbol, day) with another row
  (a stray ``09:30`` among date-only rows) is refused, naming them, instead of turning the
  whole file into intraday bars.
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
_YEAR_LAST2 = rf"(?P<a>\d{{1,2}})[-/.](?P<b>\d{{1,2}})[-/.](?P<year>\d{{2}}){_TIME}{_OFFSET}"
_COMPACT = r"(?P<year>\d{4})(?P<a>\d{2})(?P<b>\d{2})"
# (pattern, its name in the health account)
_LAYOUTS = (
    (_YEAR_FIRST, "ymd", "year first (YYYY-MM-DD)"),
    (_COMPACT, "ymd", "compact (YYYYMMDD)"),
    (_YEAR_LAST, "?", "year last (A/B/YYYY)"),
    (_YEAR_LAST2, "?", "two-digit year last (A/B/YY)"),
)
MINORITY = 0.25  # proof from fewer than this share of a column's distinct dates is no proof
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
    for a column whose day/month order is mixed or cannot be told, or that mixes layouts.
    """
    values, only, _ = parse_date_rule(text, date_format)
    return values, only


def parse_date_rule(
    text: pd.Series, date_format: str | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """:func:`parse_date_text` and the one rule it read the column with, in words."""
    codes, uniques = pd.factorize(text, use_na_sentinel=True)  # strip the few distinct ones
    stripped = pd.Series(np.asarray(uniques, dtype=object), dtype="string").str.strip()
    again, uniques = pd.factorize(stripped, use_na_sentinel=True)
    codes = np.where(codes >= 0, again[np.maximum(codes, 0)], -1)
    uniques = pd.Series(np.asarray(uniques, dtype=object), dtype="string")
    try:
        parsed, date_only, rule = _parse_unique(uniques, date_format)
    except DateFormatError as err:  # positions among distinct strings -> rows
        err.bad = (codes >= 0) & err.bad[np.maximum(codes, 0)]
        raise
    values = np.full(len(codes), np.datetime64("NaT"), dtype="datetime64[ns]")
    only = np.zeros(len(codes), dtype=bool)
    ok = codes >= 0
    values[ok] = parsed[codes[ok]]
    only[ok] = date_only[codes[ok]]
    return values, only, rule


def _parse_unique(text: pd.Series, date_format: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Parse distinct strings with one rule; errors name positions in ``text`` (mapped back
    by the caller)."""
    out = np.full(len(text), np.datetime64("NaT"), dtype="datetime64[ns]")
    date_only = np.zeros(len(text), dtype=bool)
    if len(text) == 0:
        return out, date_only, "no dates"
    if date_format is not None and date_format not in DATE_FORMAT_CHOICES:
        # an explicit strftime format; offsets are dropped first (wall-clock = local time)
        fmt = date_format.replace("%z", "").replace("%Z", "").strip()
        wall = text.str.replace(_OFFSET_AFTER_TIME, r"\1", regex=True)
        out[:] = pd.to_datetime(wall, format=fmt, errors="coerce").to_numpy("datetime64[ns]")
        date_only[:] = not any(c in fmt for c in ("%H", "%I", "%M"))
        return out, date_only, f"data.date_format {date_format!r}"

    layouts = []
    for pattern, order, name in _LAYOUTS:
        parts = text.str.extract(f"^{pattern}$")
        hit = parts["year"].notna().to_numpy()  # the layouts never match the same string
        if hit.any():
            layouts.append((hit, parts, order, name))
    left = ~np.any([h for h, *_ in layouts], axis=0) if layouts else np.ones(len(text), bool)
    if layouts and left.any():  # text that reads as no date at all stays NaT (unparseable)
        from pandas.tseries.api import guess_datetime_format

        left &= np.array([bool(v) and guess_datetime_format(v) is not None for v in
                          text.fillna("").tolist()])  # fmt: skip
    _one_layout(text, [(h, n) for h, _, _, n in layouts], left)
    if left.all():  # month names and other free text: one format for the whole column
        return _free_text(text, date_format)
    hit, parts, order, name = layouts[0]
    a = parts["a"].to_numpy()[hit].astype(np.int64)
    b = parts["b"].to_numpy()[hit].astype(np.int64)
    year = parts["year"].to_numpy()[hit].astype(np.int64)
    if order == "?":
        order = _day_month_order(text[hit], a, b, date_format, hit)
        name += ", day first" if order == "dmy" else ", month first"
    if len(parts["year"].dropna().iloc[0]) == 2:
        year = np.where(year < 69, 2000 + year, 1900 + year)  # strptime's %y
    month, day = (a, b) if order in ("ymd", "mdy") else (b, a)
    frame = {"year": year, "month": month, "day": day}
    for k in ("hour", "minute", "second"):
        v = pd.to_numeric(parts[k], errors="coerce").to_numpy()[hit] if k in parts else None
        frame[k] = np.nan_to_num(v, nan=0.0).astype(np.int64) if v is not None else 0
    stamp = pd.to_datetime(pd.DataFrame(frame), errors="coerce")
    if "frac" in parts:
        frac = pd.to_numeric(parts["frac"].to_numpy()[hit], errors="coerce")
        stamp = stamp + pd.to_timedelta(np.nan_to_num(np.asarray(frac, float)), unit="s")
    out[hit] = stamp.to_numpy("datetime64[ns]")
    date_only[hit] = parts["hour"].isna().to_numpy()[hit] if "hour" in parts else True
    return out, date_only, name


def _one_layout(text: pd.Series, layouts: list[tuple[np.ndarray, str]], left: np.ndarray) -> None:
    """Refuse a column whose dates come in more than one layout, naming the minority."""
    groups = [(h, n) for h, n in layouts] + ([(left, "another layout")] if left.any() else [])
    if len(groups) <= 1:
        return
    main = max(range(len(groups)), key=lambda k: groups[k][0].sum())
    bad = np.any([h for k, (h, _) in enumerate(groups) if k != main], axis=0)
    others = ", ".join(n for k, (_, n) in enumerate(groups) if k != main)
    raise DateFormatError(
        f"mixes date layouts: most dates are {groups[main][1]}, these are {others} "
        f"(e.g. {text[groups[main][0]].iloc[0]!r} and {text[bad].iloc[0]!r})",
        bad,
        "Write one date format in the whole column (best: 2024-01-31), or set "
        "data.date_format to a strftime format that reads every row.",
    )


def _free_text(text: pd.Series, date_format: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Dates in a layout without digits-only fields (``Jan 31, 2024``): the one format, guessed
    from up to 50 distinct strings across the column, that reads the most of them."""
    from pandas.tseries.api import guess_datetime_format

    wall = text.str.replace(_OFFSET_AFTER_TIME, r"\1", regex=True)
    sample = wall.iloc[np.unique(np.linspace(0, len(wall) - 1, min(50, len(wall))).astype(int))]
    formats = {guess_datetime_format(v, dayfirst=date_format == "dayfirst") for v in sample}
    best, best_out = None, None
    for fmt in sorted(f for f in formats if f):
        stamp = pd.to_datetime(wall, format=fmt, errors="coerce")
        if isinstance(stamp.dtype, pd.DatetimeTZDtype):
            stamp = stamp.dt.tz_localize(None)
        if best_out is None or stamp.notna().sum() > best_out.notna().sum():
            best, best_out = fmt, stamp
    if best is None:
        return (
            np.full(len(text), np.datetime64("NaT"), dtype="datetime64[ns]"),
            np.zeros(len(text), bool),
            "no readable format",
        )
    missed = best_out.isna().to_numpy()
    if missed.any() and missed.sum() < len(text):
        raise DateFormatError(
            f"mixes date formats: most dates read as {best!r}, these do not",
            missed,
            "Write one date format in the whole column (best: 2024-01-31), or set "
            "data.date_format to a strftime format that reads every row.",
        )
    only = ~wall.str.contains(":", regex=False).fillna(False).to_numpy()
    return best_out.to_numpy("datetime64[ns]"), only, f"the format {best!r}"


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
    if date_format == "dayfirst":
        return "dmy"
    if date_format == "monthfirst":
        return "mdy"
    proof = day_first if day_first.any() else month_first
    if proof.any():
        days = pd.Series(text.to_numpy()).str.split(r"[ T]", n=1, regex=True).str[0].to_numpy()
        distinct = len(set(days.tolist()))
        proven = len(set(days[proof].tolist()))
        if proven < MINORITY * distinct:  # a few rows would reorder all the others
            bad = np.zeros(len(hit), dtype=bool)
            bad[where[proof]] = True
            order = "day-first" if day_first.any() else "month-first"
            raise DateFormatError(
                f"reads {order} only because of {proven} of {distinct} distinct dates; every "
                "other date fits both orders, so these few would decide the calendar",
                bad,
                "Check these rows, then say which order: set data.date_format=dayfirst or "
                "data.date_format=monthfirst (or a format such as '%d/%m/%Y'; relcast "
                "update: --date-format).",
            )
        return "dmy" if day_first.any() else "mdy"
    bad = np.zeros(len(hit), dtype=bool)
    bad[where] = True
    return _ambiguous(text.iloc[0], bad)


def _ambiguous(example: str, bad: np.ndarray) -> str:
    raise DateFormatError(
        f"has dates like {example!r} that read both day-first and month-first",
        bad,
        "Say which: set data.date_format=dayfirst (31/01/2024) or data.date_format=monthfirst "
        "(01/31/2024), or a format such as data.date_format='%d/%m/%Y' "
        "(read_panel(..., date_format=...); relcast update: --date-format).",
    )


def parse_date_column(
    raw: pd.DataFrame,
    column: str,
    source: str,
    date_format: str | None,
    symbols: pd.Series,
    *,
    daily: bool | None = None,
    rules: dict[str, str] | None = None,
) -> np.ndarray:
    """A table's date column -> ``datetime64[ns]``: local wall-clock time, daily data by date.

    ``daily``: None = decide from the rows (date-times with at most one row per symbol and
    day are daily bars, kept by date); True / False = the caller decided (a block reader
    that sees the rows in parts, :mod:`relcast.data.blockread`).

    ``rules``: gets ``{column: the rule the column was read with}`` (for the health account).

    Raises :class:`RelcastDataError` naming the rows for unparseable, ambiguous or mixed dates,
    and for a minority of rows that would turn a daily file into intraday bars.
    """
    from relcast.data.bars import row_message

    def shown(dates: object) -> pd.DataFrame:  # only built for a message (slow on 1M rows)
        return raw.assign(symbol=np.asarray(symbols), date=dates)

    values = raw[column]
    date_only = None
    rule = "date/time values of the file"
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
            try:
                parsed, date_only, rule = parse_date_rule(text, date_format)
            except DateFormatError:
                if "_file" not in raw or raw["_file"].nunique() < 2:
                    raise
                parsed, date_only, rule = _per_file(text, raw["_file"], date_format)
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
                "data.date_format, e.g. '%d.%m.%Y'; relcast update: --date-format).",
            )
        )
    day = parsed.astype("datetime64[D]")
    if rules is not None:
        rules[column] = rule
    if (parsed == day).all():
        return parsed
    if daily is None:
        codes = pd.factorize(symbols)[0].astype(np.int64)
        days = day.view(np.int64)
        shared = pd.Series(codes * (1 << 24) + (days - days.min())).duplicated(keep=False)
        shared = shared.to_numpy()
        if shared.any() and shared.mean() < 0.5:  # a few rows would make the file intraday
            _refuse_stray_times(raw, shown(parsed), shared, column, source)
        daily = not shared.any()
    if rules is not None:
        rules[column] = rule + (", daily (by trading date)" if daily else ", intraday")
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


def _per_file(
    text: pd.Series, files: pd.Series, date_format: str | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """A folder of per-symbol files whose files differ in layout: one rule per file."""
    codes, names = pd.factorize(files)
    parsed = np.full(len(text), np.datetime64("NaT"), dtype="datetime64[ns]")
    only = np.zeros(len(text), dtype=bool)
    rules = {}
    for k in range(len(names)):
        rows = np.flatnonzero(codes == k)
        try:
            parsed[rows], only[rows], rule = parse_date_rule(text.iloc[rows], date_format)
        except DateFormatError as err:
            bad = np.zeros(len(text), dtype=bool)
            bad[rows] = err.bad
            err.bad = bad
            raise
        rules.setdefault(rule, []).append(str(names[k]))
    return (
        parsed,
        only,
        "per file: "
        + "; ".join(f"{rule} ({len(f)} file(s), e.g. {f[0]})" for rule, f in rules.items()),
    )


def _refuse_stray_times(
    raw: pd.DataFrame, rows: pd.DataFrame, shared: np.ndarray, column: str, source: str
) -> None:
    """Most rows have a trading day to themselves (daily bars); ``shared`` rows do not."""
    from relcast.data.bars import row_message

    raise RelcastDataError(
        row_message(
            source,
            rows,
            shared,
            column,
            f"gives {int(shared.sum())} of {len(shared)} rows a trading day shared with another "
            "row of their symbol (the rest of the file is daily: one row per symbol and day); "
            "read as they are, these rows would turn the whole file into intraday bars",
            [],
            fix="Remove the extra rows (or give every row its time of day if the file really "
            "holds intraday bars).",
        )
    )


def _holds_dates(values: pd.Series) -> bool:
    """An object column of ``datetime.date`` values (Parquet ``date32``)."""
    if values.dtype != object:
        return False
    first = values.dropna().head(1).tolist()
    return bool(first) and hasattr(first[0], "isoformat")
