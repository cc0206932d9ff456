"""Checks and repairs on a long bar table ``date, symbol, <fields>, _file, _line``.

Structural problems stop the read with one :class:`RelcastDataError` naming file, column and
rows: conflicting duplicate (date, symbol) rows, unsorted per-symbol files, and a symbol whose
share of bad rows exceeds ``max_bad_fraction``. Isolated bad rows are masked or repaired by the
rules of :data:`relcast.data.health.REASONS` and counted in a :class:`DataHealth` account.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from relcast.data.health import BAD_REASONS, REPAIRED_REASONS, DataHealth
from relcast.data.panel import OHLCV_FIELDS, PRICE_FIELDS, RelcastDataError

MAX_EXAMPLES = 5
JUMP_FACTOR = 3.0
MIN_ROWS = 20

# reason -> (column, problem) for the fatal message when a symbol has too many bad rows
_PROBLEM = {
    "inf": ("close", "has infinite values"),
    "missing_open": ("open", "is 0 or empty (missing) while close is positive"),
    "nonpositive_price": ("close", "has non-positive prices (must be > 0)"),
    "negative_volume": ("volume", "has negative volume"),
    "high_below_low": ("high", "is below column 'low'"),
    "stale_bar": ("close", "repeats the previous bar exactly (stale bars)"),
    "extreme_jump": ("close", f"jumps more than {JUMP_FACTOR:g}x and back (one-bar spikes)"),
    "high_low_range": ("high", "is below max(open, close) or 'low' above min(open, close)"),
}


def check_structure(frame: pd.DataFrame, source: str, health: DataHealth) -> pd.DataFrame:
    """Drop identical duplicate rows (counted); refuse conflicting duplicates and unsorted files."""
    dup = frame.duplicated(["date", "symbol"], keep=False).to_numpy()
    if dup.any():
        fields = [c for c in frame.columns if not c.startswith("_") and c not in ("date", "symbol")]
        same = frame.duplicated(["date", "symbol", *fields], keep=False).to_numpy()
        conflicting = dup & ~same
        if conflicting.any():
            raise RelcastDataError(
                row_message(
                    source,
                    frame,
                    conflicting,
                    "date",
                    "has duplicate (date, symbol) rows with different values",
                    ["date", "symbol"],
                    fix="Keep one bar per symbol and date.",
                )
            )
        extra = frame.duplicated(["date", "symbol", *fields], keep="first").to_numpy()
        health.add("duplicate_bar", frame["symbol"].to_numpy()[extra])
        frame = frame.loc[~extra].reset_index(drop=True)
    if frame.attrs.get("sorted_within_file"):
        same_file = frame["_file"].eq(frame["_file"].shift(1)).to_numpy()
        unsorted = same_file & (frame["date"] <= frame["date"].shift(1)).to_numpy()
        if unsorted.any():
            raise RelcastDataError(
                row_message(
                    source,
                    frame,
                    unsorted,
                    "date",
                    "is not sorted (each row must come after a later date than the one above)",
                    ["date"],
                    fix="Sort each per-symbol file by date.",
                )
            )
    return frame


def clean_bars(
    frame: pd.DataFrame,
    source: str,
    health: DataHealth,
    *,
    max_bad_fraction: float = 0.05,
    jump_factor: float = JUMP_FACTOR,
    also_broken: tuple[str, ...] = (),
    strict: bool = False,
) -> pd.DataFrame:
    """Mask (all fields NaN) or repair bad rows in place of a copy; count each in ``health``.

    A symbol with more than ``max_bad_fraction`` of its rows (at least ``MIN_ROWS`` counted)
    bad (suspensions and repaired rows not counted), or with no usable row at all, is broken,
    not noisy: it is excluded (every row masked, a warning, listed in ``health.excluded``),
    so one bad symbol never stops a market. ``strict``: raise :class:`RelcastDataError`
    instead, naming every such symbol. ``max_bad_fraction=0``: every bad row makes its symbol
    broken. ``also_broken``: broken symbols of the same source outside ``frame`` (a block
    reader), for the message.
    """
    fields = [c for c in frame.columns if not c.startswith("_") and c not in ("date", "symbol")]
    core = [f for f in OHLCV_FIELDS if f in fields]
    sym_codes, names = pd.factorize(frame["symbol"])  # cheap on categoricals
    names = np.asarray(names, dtype=str)
    order = np.lexsort((frame["date"].to_numpy(), sym_codes))  # by symbol, then date
    values = frame[core].to_numpy(dtype=np.float64)[order]  # (R, 5) in symbol/date order
    allv = frame[fields].to_numpy(dtype=np.float64)[order]
    o, h, l, c, v = values.T
    sym = sym_codes[order]
    reasons: list[str] = []
    why = np.zeros(len(order), dtype=np.int8)  # 0 = fine, k = reasons[k - 1]

    def flag(reason: str, hit: np.ndarray) -> None:
        reasons.append(reason)
        why[hit & (why == 0)] = len(reasons)

    with np.errstate(invalid="ignore", divide="ignore"):
        flag("inf", np.isinf(allv).any(axis=1))
        flag("missing_open", ((o == 0) | np.isnan(o)) & (c > 0) & np.isfinite(c))
        flag("missing_value", np.isnan(values).any(axis=1))
        flag("nonpositive_price", (values[:, :4] <= 0).any(axis=1))
        flag("negative_volume", v < 0)
        flag("high_below_low", h < l)
        same_sym = np.r_[False, sym[1:] == sym[:-1]]
        repeat = np.r_[False, (values[1:] == values[:-1]).all(axis=1)]
        flag("stale_bar", same_sym & repeat & (v > 0))
        flag("extreme_jump", _spikes(c, sym, why == 0, jump_factor))
        ok = why == 0
        fix_high = ok & (h < np.maximum(o, c))
        fix_low = ok & (l > np.minimum(o, c))
    flag("high_low_range", fix_high | fix_low)
    counted = BAD_REASONS + (REPAIRED_REASONS if strict else ())
    broken = _broken_symbols(why, reasons, sym, names, max_bad_fraction, counted)
    if strict and broken:
        _refuse_broken_symbols(
            _SortedRows(frame, order, sym, names),
            source,
            why,
            reasons,
            max_bad_fraction,
            also_broken,
        )
        raise RelcastDataError(
            f"{source}: symbol(s) without a usable row: "
            + "; ".join(f"{k}: {v}" for k, v in sorted(broken.items()))
            + ". Fix their rows, or set data.strict: false to exclude them."
        )

    masked = (why > 0) & (why != len(reasons))
    out = frame  # built by the reader for this call: changed in place
    rows = order  # frame row of each sorted position
    if masked.any():
        out.iloc[rows[masked], [out.columns.get_loc(f) for f in fields]] = np.nan
    if (fix_high | fix_low).any():
        hi, lo = out.columns.get_loc("high"), out.columns.get_loc("low")
        out.iloc[rows[fix_high], hi] = np.maximum.reduce([o, h, c])[fix_high]
        out.iloc[rows[fix_low], lo] = np.minimum.reduce([o, l, c])[fix_low]
    for k, reason in enumerate(reasons, start=1):
        counts = np.bincount(sym[why == k], minlength=len(names))
        health.add_counts(reason, names, counts)
    if broken:  # every row masked: the symbol stays in the market, out of every step
        exclude_symbols(source, broken, health)
        gone = out["symbol"].isin(list(broken)).to_numpy()
        out.iloc[np.flatnonzero(gone), [out.columns.get_loc(f) for f in fields]] = np.nan
    return out


def _broken_symbols(
    why: np.ndarray,
    reasons: list[str],
    sym: np.ndarray,
    names: np.ndarray,
    max_bad_fraction: float,
    counted: tuple[str, ...],
) -> dict[str, str]:
    """``{symbol: why}`` of the symbols too broken to use: more than ``max_bad_fraction`` of
    their rows bad (``counted`` reasons), or every row masked."""
    bad_codes = [k for k, r in enumerate(reasons, start=1) if r in counted]
    bad = np.isin(why, bad_codes)
    kept = (why == 0) | (why == reasons.index("high_low_range") + 1)
    rows_per = np.bincount(sym, minlength=len(names))
    bad_per = np.bincount(sym[bad], minlength=len(names))
    kept_per = np.bincount(sym[kept], minlength=len(names))
    out = {}
    for n in np.flatnonzero(bad_per > max_bad_fraction * np.maximum(rows_per, MIN_ROWS)):
        mine = why[bad & (sym == n)]
        worst = reasons[int(np.bincount(mine).argmax()) - 1]
        out[str(names[n])] = (
            f"{bad_per[n]} of {rows_per[n]} rows bad (mostly {worst}), more than "
            f"data.max_bad_fraction={max_bad_fraction:g}"
        )
    masked_per = np.bincount(sym[why > 0], minlength=len(names))
    suspended_per = np.bincount(
        sym[why == reasons.index("missing_value") + 1], minlength=len(names)
    )
    # no usable row, and not only suspensions (a universe member without bars stays, masked)
    for n in np.flatnonzero((kept_per == 0) & (masked_per > suspended_per)):
        if str(names[n]) not in out:
            codes = why[sym == n]
            worst = reasons[int(np.bincount(codes[codes > 0]).argmax()) - 1]
            out[str(names[n])] = f"every one of its {rows_per[n]} rows masked (mostly {worst})"
    return out


def exclude_symbols(source: str, broken: dict[str, str], health: DataHealth) -> None:
    """Record and announce (a warning) the symbols left out of the run."""
    import warnings

    health.excluded.update(broken)
    shown = "; ".join(f"{s}: {w}" for s, w in list(sorted(broken.items()))[:10])
    more = f" (and {len(broken) - 10} more)" if len(broken) > 10 else ""
    warnings.warn(
        f"{source}: {len(broken)} symbol(s) excluded from the run: {shown}{more}. They are "
        "listed in data_health.json and by `relcast check`; fix their rows, raise "
        "data.max_bad_fraction, or set data.strict: true to refuse such a market instead",
        UserWarning,
        stacklevel=3,
    )


def _spikes(close: np.ndarray, sym: np.ndarray, ok: np.ndarray, factor: float) -> np.ndarray:
    """One-bar spikes: a close ``factor`` x above (or below) both neighbouring good closes."""
    hit = np.zeros(len(close), dtype=bool)
    idx = np.flatnonzero(ok & np.isfinite(close) & (close > 0))
    if len(idx) < 3:
        return hit
    c, s = close[idx], sym[idx]
    inner = (s[1:-1] == s[:-2]) & (s[1:-1] == s[2:])
    up = (c[1:-1] > factor * c[:-2]) & (c[1:-1] > factor * c[2:])
    down = (c[1:-1] * factor < c[:-2]) & (c[1:-1] * factor < c[2:])
    hit[idx[1:-1][inner & (up | down)]] = True
    return hit


@dataclass(frozen=True)
class _SortedRows:
    """A reader's frame with its rows sorted by symbol, then date: ``order`` (the frame row
    of each sorted position), ``sym`` (its symbol code) and ``names`` (symbol of each code)."""

    frame: pd.DataFrame
    order: np.ndarray
    sym: np.ndarray
    names: np.ndarray


def _refuse_broken_symbols(
    rows_sorted: _SortedRows,
    source: str,
    why: np.ndarray,
    reasons: list[str],
    max_bad_fraction: float,
    also_broken: tuple[str, ...] = (),
) -> None:
    """Raise when a symbol's share of bad rows (``why`` codes into ``reasons``, one per sorted
    row; repaired rows count, as ``data.strict`` asks) is too high."""
    frame, order, sym, names = (
        rows_sorted.frame, rows_sorted.order, rows_sorted.sym, rows_sorted.names
    )  # fmt: skip
    bad_codes = [k for k, r in enumerate(reasons, start=1) if r in BAD_REASONS + REPAIRED_REASONS]
    bad = np.isin(why, bad_codes)
    rows_per = np.bincount(sym, minlength=len(names))
    bad_per = np.bincount(sym[bad], minlength=len(names))
    # a short history is judged as if it had MIN_ROWS rows: one bad row of a symbol listed
    # last week is noise, not a broken file
    broken = np.flatnonzero(bad_per > max_bad_fraction * np.maximum(rows_per, MIN_ROWS))
    if len(broken) == 0:
        return  # the caller names the symbols without a usable row
    worst = broken[np.argmax(bad_per[broken] / rows_per[broken])]
    mine = bad & (sym == worst)
    codes, counts = np.unique(why[mine], return_counts=True)
    code = int(codes[np.argmax(counts)])
    reason = reasons[code - 1]
    column, problem = _PROBLEM[reason]
    rows = np.zeros(len(frame), dtype=bool)
    rows[order[mine & (why == code)]] = True
    if reason in ("inf", "nonpositive_price"):  # name the first offending column
        values = frame.loc[rows, list(OHLCV_FIELDS)].to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            hit = np.isinf(values) if reason == "inf" else values[:, :4] <= 0
        column = OHLCV_FIELDS[int(np.argmax(hit.any(axis=0)))]
    name = names[worst]
    share = f"{bad_per[worst]} of {rows_per[worst]} rows of symbol {name} are bad"
    every = ", ".join(sorted({str(names[k]) for k in broken} | set(also_broken)))
    raise RelcastDataError(
        row_message(
            source,
            frame,
            rows,
            column,
            problem,
            ["open", "high", "low", "close", "volume"],
            fix=(
                f"{share} (more than data.max_bad_fraction={max_bad_fraction:g}; "
                f"{len(broken) + len(also_broken)} symbol(s) like this: {every}). Fix the file, "
                "raise data.max_bad_fraction to mask such rows and count them in the "
                "data-health account, or set data.strict: false to exclude these symbols."
            ),
        )
    )


def count_gaps(frame: pd.DataFrame, dates: np.ndarray, health: DataHealth) -> None:
    """Count dates without a row inside each symbol's first..last row (``gap``)."""
    t = np.searchsorted(dates, frame["date"].to_numpy(dtype="datetime64[ns]"))
    codes, uniques = pd.factorize(frame["symbol"])
    first = np.full(len(uniques), len(dates), dtype=np.int64)
    last = np.full(len(uniques), -1, dtype=np.int64)
    np.minimum.at(first, codes, t)
    np.maximum.at(last, codes, t)
    have = np.bincount(codes, minlength=len(uniques))
    gaps = (last - first + 1) - have
    health.add_counts("gap", np.asarray(uniques, dtype=str), gaps)


def bad_bar_checks(frame: pd.DataFrame) -> list[tuple[str, str, np.ndarray, list[str]]]:
    """Rows with impossible prices: ``[(column, problem, bad_rows bool [R], shown_columns)]``.

    Checked on rows whose prices are all present: non-positive or infinite prices, negative
    volume, ``high < low``, ``high < max(open, close)``, ``low > min(open, close)``.
    """
    prices = frame[list(PRICE_FIELDS)].to_numpy(dtype=np.float64)
    present = ~np.isnan(prices).any(axis=1)
    found = []
    for k, name in enumerate(PRICE_FIELDS):
        bad = present & ((prices[:, k] <= 0) | np.isinf(prices[:, k]))
        if bad.any():
            found.append((name, "has non-positive or infinite prices", bad, [name]))
    if "volume" in frame.columns:
        volume = frame["volume"].to_numpy(dtype=np.float64)
        bad = (volume < 0) | np.isinf(volume)  # NaN compares False
        if bad.any():
            found.append(("volume", "has negative or infinite volume", bad, ["volume"]))
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


def row_message(
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
    rows = frame.loc[np.asarray(bad, dtype=bool)]
    if "_file" in rows.columns and "_line" in rows.columns:
        rows = rows.sort_values(["_file", "_line"], kind="stable")
    files = rows["_file"].astype(str).unique() if "_file" in rows.columns else []
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
        parts += [f"{c}={_fmt(row[c])}" for c in shown if c not in ("date", "symbol") and c in row]
        examples.append(f"{where} ({', '.join(parts)})".strip())
    return (
        f"{source}: column {column!r} {problem} in {int(np.sum(bad))} row(s), "
        f"e.g. {'; '.join(examples)}. {fix}"
    )


def _fmt(value: object) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):g}"
    return repr(str(value)) if isinstance(value, str | np.str_) else str(value)
