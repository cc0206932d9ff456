"""Does a batch of new bars continue a run? (``relcast update``; docs/reliability.md)

An update appends dates and can never insert one later, so a batch must continue the run's
calendar exactly:

* **the same frequency**: daily bars on a daily run, bars with clock times on an intraday
  run (intraday bars on a daily run would be keyed by date and fail deep in the models);
* **no skipped trading days**: between the run's last day and the batch's first, and inside
  the batch, no more weekdays without bars than the run's own history ever had in a row (its
  longest holiday); this also refuses a batch dated years ahead;
* **neighbours across the boundary**: the health checks that compare a bar with the one
  before it (``stale_bar``, ``extreme_jump``) see the stored bar before the first new one, as
  they would have if the batch had been part of the file (:func:`mask_boundary_bars`).

Everything here works on arrays (dates ``datetime64[ns]``, values ``[T, N, F]``), so it has no
idea of run folders; :mod:`relcast.inference` calls it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from relcast.data.bars import JUMP_FACTOR
from relcast.data.panel import OHLCV_FIELDS, RelcastDataError


def _days(dates: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(dates, dtype="datetime64[ns]").astype("datetime64[D]"))


def is_daily(dates: np.ndarray) -> bool:
    """Every timestamp at midnight: bars keyed by trading date."""
    dates = np.asarray(dates, dtype="datetime64[ns]")
    return bool((dates == dates.astype("datetime64[D]")).all())


def longest_hole(days: np.ndarray) -> int:
    """The most weekdays without bars between two consecutive trading days of ``days``."""
    if len(days) < 2:
        return 0
    return int(np.busday_count(days[:-1] + 1, days[1:]).max())


def check_continuation(run_dates: np.ndarray, new_dates: np.ndarray, source: str) -> None:
    """Refuse a batch whose dates do not continue the run's calendar (see the module doc).

    ``run_dates``: the run's dates (sorted); ``new_dates``: the batch's (sorted, all after the
    run's last date). Raises :class:`RelcastDataError` saying what is wrong and what to pass.
    """
    run_daily, new_daily = is_daily(run_dates), is_daily(new_dates)
    if run_daily and not new_daily:
        raise RelcastDataError(
            f"{source}: the batch holds bars with clock times (intraday, e.g. "
            f"{pd.Timestamp(new_dates[~(new_dates == new_dates.astype('datetime64[D]'))][0])}), "
            "but the run was trained on daily bars; pass one daily bar per symbol and day"
        )
    if not run_daily and new_daily:
        raise RelcastDataError(
            f"{source}: the batch holds daily bars (dates without a time), but the run was "
            "trained on intraday bars; pass bars with their time of day"
        )
    run_days, new_days = _days(run_dates), _days(new_dates)
    allowed = longest_hole(run_days)
    days = np.concatenate([run_days[-1:], new_days])
    holes = np.busday_count(days[:-1] + 1, days[1:])
    worst = int(np.argmax(holes))
    if holes[worst] > allowed:
        before, after = pd.Timestamp(days[worst]).date(), pd.Timestamp(days[worst + 1]).date()
        where = "the run's last day" if worst == 0 else "a day of the batch"
        raise RelcastDataError(
            f"{source}: {holes[worst]} weekday(s) without bars between {where} {before} and "
            f"{after}, but the run's calendar never skipped more than {allowed} in a row; an "
            "update appends dates and can never fill a hole later, so pass the bars of the "
            f"missing days (from {np.busday_offset(days[worst] + 1, 0, roll='forward')}) first"
        )


def mask_boundary_bars(
    old_values: np.ndarray,
    old_mask: np.ndarray,
    new_values: np.ndarray,
    new_mask: np.ndarray,
    fields: tuple[str, ...],
) -> dict[str, np.ndarray]:
    """Mask (in place, in ``new_mask``) each symbol's first new bar that the reader's
    neighbour checks would have masked had it seen the stored bar before it: a ``stale_bar``
    (open/high/low/close/volume all equal to the stored last bar, volume > 0) or an
    ``extreme_jump`` (close more than 3x away from the stored close and from the next new
    close, in the same direction). Returns ``{reason: symbol positions}`` of what it masked.

    ``old_values [T0, N, F]`` / ``old_mask [T0, N]``: the run's bars; ``new_values [T1, N, F]``
    / ``new_mask [T1, N]``: the batch on the run's symbols and fields.
    """
    core = [fields.index(f) for f in OHLCV_FIELDS]
    close = fields.index("close")
    N = old_mask.shape[1]
    has_old = old_mask.any(axis=0)
    has_new = new_mask.any(axis=0)
    last = old_mask.shape[0] - 1 - np.argmax(old_mask[::-1], axis=0)  # (N,) last stored bar
    first = np.argmax(new_mask, axis=0)  # (N,) first new bar
    n = np.arange(N)
    prev = np.asarray(old_values[last, n][:, core], dtype=np.float64)  # (N, 5)
    cur = np.asarray(new_values[first, n][:, core], dtype=np.float64)
    ok = has_old & has_new
    stale = ok & (prev == cur).all(axis=1) & (cur[:, 4] > 0)
    # the next good new close of each symbol after its first
    later = new_mask.copy()
    later[first, n] = False
    has_next = later.any(axis=0)
    nxt = np.asarray(new_values[np.argmax(later, axis=0), n, close], dtype=np.float64)
    c, p = cur[:, 3], prev[:, 3]
    with np.errstate(invalid="ignore"):
        up = (c > JUMP_FACTOR * p) & (c > JUMP_FACTOR * nxt)
        down = (c * JUMP_FACTOR < p) & (c * JUMP_FACTOR < nxt)
    jump = ok & has_next & ~stale & (up | down)
    for hit in (stale, jump):
        new_mask[first[hit], n[hit]] = False
        new_values[first[hit], n[hit]] = np.nan
    return {"stale_bar": n[stale], "extreme_jump": n[jump]}


def continue_run(old, new, source: str, excluded=()) -> dict[str, np.ndarray]:
    """Check and prepare a batch (a :class:`Panel` on the run's symbols and fields, dates
    after the run's) to be appended to the run's panel ``old``: :func:`check_continuation`,
    then, in ``new``'s arrays, :func:`mask_boundary_bars` and every cell of the symbols the
    run excluded (``excluded``, from its ``data_health.json``) masked."""
    check_continuation(old.dates, new.dates, source)
    gone = np.isin(new.symbols, list(excluded))
    new.mask[:, gone] = False
    new.values[:, gone] = np.nan
    return mask_boundary_bars(old.values, old.mask, new.values, new.mask, old.fields)
