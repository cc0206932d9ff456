"""Chronological train / valid / test splits with an embargo gap between spans."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Split:
    """Index arrays into ``dates`` for each span, in time order.

    Attributes:
        train, valid, test: ``int`` arrays of date indices (``valid`` may be empty only when
            asked for with ``valid_frac=0``).
        embargo: number of dates dropped between consecutive spans.
        dates: the dates the indices point into (for :meth:`describe`).
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    embargo: int
    dates: np.ndarray

    def describe(self) -> str:
        """One line per span: first and last date and the number of dates."""
        lines = []
        for name in ("train", "valid", "test"):
            idx = getattr(self, name)
            if len(idx) == 0:
                lines.append(f"{name:<5}  (empty)")
                continue
            first, last = (pd.Timestamp(self.dates[i]) for i in (idx[0], idx[-1]))
            lines.append(f"{name:<5}  {first} .. {last}  ({len(idx)} dates)")
        lines.append(f"embargo {self.embargo} dates between spans")
        return "\n".join(lines)


def chronological_split(
    dates: np.ndarray,
    valid_frac: float = 0.15,
    test_frac: float = 0.15,
    embargo: int = 1,
    *,
    valid_start: str | np.datetime64 | None = None,
    test_start: str | np.datetime64 | None = None,
) -> Split:
    """Split dates into train, valid and test, in that order, with embargo gaps.

    ``embargo`` dates are dropped at the end of the train span and at the end of the valid
    span, so that no label window of one span reaches into the next: pass at least the
    longest horizon plus the label delay (``forward_returns(..., horizons=H, delay=d)``
    needs ``H + d``).

    Sizes come from ``valid_frac`` / ``test_frac`` of all dates (test at the end), unless
    ``valid_start`` / ``test_start`` give the first date of a span (the first panel date
    ``>=`` the given one); :func:`split_by_end_dates` gives the spans by their last dates
    instead. ``valid_frac=0`` (without ``valid_start``) means no validation span. Raises
    ``ValueError`` naming the problem when a span would be empty.
    """
    dates = np.asarray(dates, dtype="datetime64[ns]")
    T = len(dates)
    if embargo < 0:
        raise ValueError(f"embargo must be >= 0, got {embargo}")
    for name, frac in (("valid_frac", valid_frac), ("test_frac", test_frac)):
        if not 0 <= frac < 1:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")

    def start_of(when: str | np.datetime64) -> int:
        return int(np.searchsorted(dates, np.datetime64(pd.Timestamp(when), "ns"), "left"))

    test_begin = start_of(test_start) if test_start is not None else T - round(T * test_frac)
    with_valid = valid_start is not None or valid_frac > 0
    if valid_start is not None:
        valid_begin = start_of(valid_start)
    elif with_valid:
        valid_begin = test_begin - embargo - round(T * valid_frac)
    else:
        valid_begin = test_begin
    train_end = valid_begin - embargo  # exclusive
    valid_end = test_begin - embargo if with_valid else valid_begin

    train = np.arange(0, max(train_end, 0))
    valid = np.arange(valid_begin, max(valid_end, valid_begin)) if with_valid else train[:0]
    test = np.arange(test_begin, T)
    problems = [
        name
        for name, idx in (("train", train), ("valid", valid), ("test", test))
        if len(idx) == 0 and (name != "valid" or with_valid)
    ]
    if problems or test_begin < valid_begin:
        raise ValueError(
            f"chronological_split of {T} dates (valid_frac={valid_frac}, "
            f"test_frac={test_frac}, embargo={embargo}, valid_start={valid_start}, "
            f"test_start={test_start}) leaves empty or out-of-order spans: {problems or 'valid'}; "
            "use more dates, smaller fractions or a shorter embargo"
        )
    return Split(train=train, valid=valid, test=test, embargo=embargo, dates=dates)


def split_by_end_dates(
    dates: np.ndarray,
    train_end: str | np.datetime64 | None,
    valid_end: str | np.datetime64 | None,
    test_end: str | np.datetime64 | None = None,
    *,
    embargo: int = 1,
) -> Split:
    """Spans that end at given dates (inclusive): train = dates ``<= train_end``, valid =
    ``(train_end, valid_end]``, test = ``(valid_end, test_end]`` (the benchmark protocol:
    train ..2015-12-31, valid 2016, test 2017; ``test_end`` None: the last date), each of the
    first two minus its last ``embargo`` dates. Raises ``ValueError`` naming the problem when
    a span would be empty or a date falls outside ``dates``."""
    dates = np.asarray(dates, dtype="datetime64[ns]")
    if embargo < 0:
        raise ValueError(f"embargo must be >= 0, got {embargo}")
    if train_end is None or valid_end is None:
        raise ValueError("train_end and valid_end must be given together (test_end optional)")
    T = len(dates)
    ends = {"train_end": train_end, "valid_end": valid_end}
    if test_end is not None:
        ends["test_end"] = test_end
    stamp = {k: np.datetime64(pd.Timestamp(v), "ns") for k, v in ends.items()}
    span = f"{pd.Timestamp(dates[0]).date()}..{pd.Timestamp(dates[-1]).date()}" if T else "empty"
    for key, when in stamp.items():
        if T == 0 or not dates[0] <= when <= dates[-1]:
            raise ValueError(f"{key}={ends[key]} is outside the data's dates ({span})")
    order = list(stamp.values())
    if order != sorted(order) or len(set(order)) != len(order):
        raise ValueError(
            "train_end < valid_end < test_end must hold, got "
            + ", ".join(f"{k}={v}" for k, v in ends.items())
        )
    train_stop, valid_stop, test_stop = (
        int(np.searchsorted(dates, stamp[k], "right")) if k in stamp else T
        for k in ("train_end", "valid_end", "test_end")
    )
    train = np.arange(0, max(train_stop - embargo, 0))
    valid = np.arange(train_stop, max(valid_stop - embargo, train_stop))
    test = np.arange(valid_stop, test_stop)
    empty = [n for n, idx in (("train", train), ("valid", valid), ("test", test)) if not len(idx)]
    if empty:
        raise ValueError(
            f"the {'/'.join(empty)} span(s) are empty with "
            + ", ".join(f"{k}={v}" for k, v in ends.items())
            + f" and an embargo of {embargo} dates on {T} dates ({span}); move the end dates"
        )
    return Split(train=train, valid=valid, test=test, embargo=embargo, dates=dates)
