"""Calendar features of the panel's trading dates, with fixed scaling (nothing is fitted).

Features (same for every stock at a date):

- ``day_of_week``: Monday 0 .. Friday 1 (``weekday / 4``; weekend bars exceed 1).
- ``day_of_month``: ``(day - 1) / 30`` in ``[0, 1]``.
- ``month``: ``(month - 1) / 11`` in ``[0, 1]``.
- ``is_month_end``: 1 on the last trading day of a month, else 0.
- ``is_quarter_end``: 1 on the last trading day of March, June, September, December.
- ``minute_of_session`` (intraday timestamps only): the bar's time of day as a fraction of
  the session, 0 at the earliest and 1 at the latest time of day in the calendar.

"Last trading day" is read from the panel's own trading calendar: a day is a month end when
the next trading day is in another month. The last day of the panel has no next trading
day in the data, and looking further would be looking ahead, so there the business-day
calendar decides (the day is a month end if the next business day, Monday to Friday, is in
another month). The two agree except on holiday-shortened month ends. Dates are a schedule
known in advance, not market data, so using the panel's calendar is not price look-ahead;
the session bounds for ``minute_of_session`` are treated the same way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CALENDAR_FEATURES = ("day_of_week", "day_of_month", "month", "is_month_end", "is_quarter_end")


def calendar_features(dates: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Calendar features of ``dates [T]``: ``(names, float32 [T, F_cal])``."""
    stamps = pd.DatetimeIndex(np.asarray(dates, dtype="datetime64[ns]"))
    days = stamps.normalize()  # (T,) the trading day of each bar
    unique_days, day_of_bar = np.unique(days.to_numpy(), return_inverse=True)
    unique_days = pd.DatetimeIndex(unique_days)

    # next trading day of each trading day; the last one falls back to the next business day
    following = np.empty(len(unique_days), dtype="datetime64[ns]")
    following[:-1] = unique_days.to_numpy()[1:]
    if len(unique_days):
        following[-1] = (unique_days[-1] + pd.offsets.BDay(1)).to_datetime64()
    following = pd.DatetimeIndex(following)
    day_month_end = following.month != unique_days.month
    day_quarter_end = day_month_end & (unique_days.month % 3 == 0)

    columns = {
        "day_of_week": stamps.dayofweek.to_numpy() / 4.0,
        "day_of_month": (stamps.day.to_numpy() - 1) / 30.0,
        "month": (stamps.month.to_numpy() - 1) / 11.0,
        "is_month_end": day_month_end[day_of_bar].astype(float),
        "is_quarter_end": day_quarter_end[day_of_bar].astype(float),
    }
    if len(unique_days) < len(stamps):  # several bars on some day: intraday data
        minute = (stamps - days).total_seconds().to_numpy() / 60.0
        first, last = minute.min(), minute.max()
        columns["minute_of_session"] = (minute - first) / max(last - first, 1.0)
    names = list(columns)
    return names, np.stack([columns[n] for n in names], axis=1).astype(np.float32)
