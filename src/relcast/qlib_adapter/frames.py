"""qlib's tables <-> relcast's arrays.

A qlib ``DatasetH.prepare(...)`` frame has one row per (datetime, instrument) (a MultiIndex,
in either level order) and one column per feature or label. relcast reads a date's whole
cross-section at once, so the frame becomes ``[T, N, F]`` arrays with a mask: a (date,
instrument) without a row, or with a non-finite feature, is masked (never zero-filled into
Stage1's attention). qlib's ``Fillna`` processor, where the handler has one, decides what a
missing feature becomes before relcast sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from relcast.data.panel import RelcastDataError

DATETIME, INSTRUMENT = "datetime", "instrument"


@dataclass(frozen=True)
class Grid:
    """The (date, instrument) grid of a frame: ``dates [T]`` and ``instruments [N]``, both
    sorted, and each row's position on it (``t [rows]``, ``n [rows]``; ``n = -1`` for an
    instrument outside ``instruments``)."""

    dates: np.ndarray
    instruments: np.ndarray
    t: np.ndarray
    n: np.ndarray


def row_levels(index: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """``(datetime64[ns] [rows], str [rows])`` of a qlib frame's (datetime, instrument) index."""
    if not isinstance(index, pd.MultiIndex) or {DATETIME, INSTRUMENT} - set(index.names):
        raise RelcastDataError(
            f"a qlib frame's index must be a MultiIndex with levels {DATETIME!r} and "
            f"{INSTRUMENT!r}, got {list(getattr(index, 'names', []))}; pass the frame that "
            "DatasetH.prepare returns"
        )
    dates = np.asarray(index.get_level_values(DATETIME), dtype="datetime64[ns]")
    return dates, np.asarray(index.get_level_values(INSTRUMENT)).astype(str)


def grid_of(index: pd.Index, instruments: np.ndarray | None = None) -> Grid:
    """The grid of a frame's rows; ``instruments`` fixes the instrument axis (the fitted
    universe), else it is every instrument of the frame, sorted."""
    dates, names = row_levels(index)
    grid_dates, t = np.unique(dates, return_inverse=True)
    if instruments is None:
        instruments, n = np.unique(names, return_inverse=True)
    else:
        instruments = np.asarray(instruments).astype(str)
        order = np.argsort(instruments)
        pos = np.searchsorted(instruments, names, sorter=order).clip(0, len(instruments) - 1)
        n = order[pos]
        n = np.where(instruments[n] == names, n, -1)
    return Grid(grid_dates, instruments, t.astype(np.int64), np.asarray(n, dtype=np.int64))


def to_cube(frame: pd.DataFrame, grid: Grid) -> np.ndarray:
    """``float32 [T, N, C]`` of the frame's columns on ``grid``, NaN where it has no row."""
    values = frame.to_numpy(dtype=np.float32, na_value=np.nan)
    cube = np.full((len(grid.dates), len(grid.instruments), values.shape[1]), np.nan, np.float32)
    known = grid.n >= 0
    cube[grid.t[known], grid.n[known]] = values[known]
    return cube


def columns_of(frame: pd.DataFrame) -> list[str]:
    """Column names as text (the last level of a MultiIndex: ``("feature", "KMID")`` ->
    ``"KMID"``)."""
    cols = frame.columns
    names = cols.get_level_values(-1) if isinstance(cols, pd.MultiIndex) else cols
    return [str(c) for c in names]


def series_on(values: np.ndarray, dates: np.ndarray, instruments: np.ndarray, index: pd.Index):
    """``pd.Series`` with qlib's ``index`` (its rows, its level order) holding
    ``values [T, N]`` at each row's (date, instrument); NaN where the grid has no such cell."""
    grid = grid_of(index, instruments)
    pos = np.searchsorted(dates, grid.dates)
    pos = np.where(pos < len(dates), pos, 0)
    known_date = dates[pos] == grid.dates  # per grid date
    t = pos[grid.t]
    ok = (grid.n >= 0) & known_date[grid.t]
    out = np.full(len(index), np.nan, dtype=np.float64)
    out[ok] = values[t[ok], grid.n[ok]]
    return pd.Series(out, index=index, name="score")
