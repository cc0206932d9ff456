"""Feature normalisation: the one place where statistics are fitted.

Leakage control lives here, visibly (the qlib habit):

- **Own stock features** are normalised *cross-sectionally*, within each date, over the
  stocks valid at that date (:func:`cross_sectional_robust_zscore`). A value at t uses only
  date t's cross-section, so nothing from other dates leaks in.
- **Market-index features** are the same for every stock at a date, so a cross-section
  cannot scale them; they are z-scored with a mean and standard deviation fitted on the
  **training span only** (:class:`TrainSpanScaler`, with :func:`resolve_train_end`), once:
  a run saves the fitted statistics (:func:`scalers_to_dict`, ``normalization.json``) and
  ``predict``/``update`` reuse them, so a forecast depends on the bars its lookback window
  reads, not on how much older history the data file holds.
- **Calendar features** use fixed scaling (see :mod:`relcast.features.calendar`); nothing
  is fitted.

Labels are normalised apart from features, in :mod:`relcast.features.labels`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MAD_TO_STD = 1.4826  # MAD of a normal distribution times this is its standard deviation
DEFAULT_TRAIN_FRACTION = 0.6


def resolve_train_end(dates: np.ndarray, train_end: int | str | np.datetime64 | None) -> int:
    """The index of the last training date, from an index, a date or ``None``.

    A date picks the last panel date ``<= train_end``. ``None`` means the first 60% of the
    dates (``DEFAULT_TRAIN_FRACTION``): pass the real end of your training span to fit on
    exactly that.
    """
    T = len(dates)
    if T == 0:
        raise ValueError("cannot fit normalisation statistics on a panel without dates")
    if train_end is None:
        return max(int(T * DEFAULT_TRAIN_FRACTION) - 1, 0)
    if isinstance(train_end, int | np.integer):
        idx = int(train_end) if train_end >= 0 else T + int(train_end)
        if not 0 <= idx < T:
            raise ValueError(f"train_end={train_end} is outside the {T} panel dates")
        return idx
    when = np.datetime64(pd.Timestamp(train_end), "ns")
    idx = int(np.searchsorted(np.asarray(dates, dtype="datetime64[ns]"), when, side="right")) - 1
    if idx < 0:
        raise ValueError(
            f"train_end={train_end} is before the first panel date {pd.Timestamp(dates[0])}; "
            "pass a date inside the panel"
        )
    return idx


class TrainSpanScaler:
    """Z-score with mean and std fitted on training rows only (sklearn-like).

    Works on ``[T, F]`` (or ``[T, N, F]``) arrays; NaN values are ignored when fitting and
    stay NaN when transforming. A feature with zero spread in the training span is only
    centred (std 1).

    Attributes:
        mean_: ``[F]`` training mean.
        std_: ``[F]`` training standard deviation (1 where it was 0).
    """

    def fit(self, values: np.ndarray, train_rows: np.ndarray | slice) -> TrainSpanScaler:
        """Fit on ``values[train_rows]`` (rows = dates)."""
        train = np.asarray(values[train_rows], dtype=np.float64)
        train = train.reshape(-1, train.shape[-1])  # (rows, F)
        count = np.isfinite(train).sum(axis=0)
        if (count == 0).any():
            raise ValueError(
                f"{int((count == 0).sum())} feature(s) have no finite value in the training "
                "span; choose a later train_end or a longer panel"
            )
        with np.errstate(invalid="ignore"):
            self.mean_ = np.nanmean(train, axis=0)
            std = np.nanstd(train, axis=0)
        self.std_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, values: np.ndarray) -> np.ndarray:
        """``(values - mean_) / std_``."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape[-1] != len(self.mean_):
            raise ValueError(
                f"the scaler was fitted on {len(self.mean_)} features, got {values.shape[-1]}"
            )
        return (values - self.mean_) / self.std_

    def to_dict(self) -> dict[str, list[float]]:
        """The fitted statistics as JSON-ready lists (exact float64 round trip)."""
        return {"mean": [float(x) for x in self.mean_], "std": [float(x) for x in self.std_]}

    @classmethod
    def from_dict(cls, data: dict) -> TrainSpanScaler:
        """A fitted scaler from :meth:`to_dict`'s output."""
        scaler = cls()
        scaler.mean_ = np.asarray(data["mean"], dtype=np.float64)
        scaler.std_ = np.asarray(data["std"], dtype=np.float64)
        if scaler.mean_.shape != scaler.std_.shape or scaler.mean_.ndim != 1:
            raise ValueError("mean and std must be lists of the same length")
        return scaler


def scalers_to_dict(scalers: dict[str, tuple[list[str], TrainSpanScaler]]) -> dict:
    """``{group: (column names, scaler)}`` -> JSON-ready ``{group: {names, mean, std}}``."""
    return {group: {"names": list(names), **s.to_dict()} for group, (names, s) in scalers.items()}


def scalers_from_dict(data: dict) -> dict[str, tuple[list[str], TrainSpanScaler]]:
    """The inverse of :func:`scalers_to_dict`."""
    return {
        group: (list(entry["names"]), TrainSpanScaler.from_dict(entry))
        for group, entry in data.items()
    }


def cross_sectional_robust_zscore(
    values: np.ndarray,
    valid: np.ndarray,
    reference: np.ndarray | None = None,
    clip: float = 5.0,
) -> np.ndarray:
    """Robust z-score of each feature within each date: ``(x - median) / (1.4826 * MAD)``.

    Args:
        values: ``[T, N, F]`` (or ``[T, N]``) raw features, NaN where undefined.
        valid: ``bool [T, N]``: rows to normalise (others come out NaN).
        reference: ``bool [N]``: rows whose values define the median and MAD (e.g. stocks but
            not market indices); all rows if ``None``. At a date where no reference row is
            valid, all valid rows are the reference.
        clip: output is clipped to ``[-clip, clip]``.

    Where MAD is 0 (half the cross-section or more ties) the standard deviation is used
    instead; where that is 0 too the feature is 0 at that date. Returns ``float32`` of the
    input's shape. Each date uses only its own cross-section.
    """
    values = np.asarray(values)
    ref_rows = valid if reference is None else valid & np.asarray(reference)[None, :]
    no_ref = ~ref_rows.any(axis=1)  # (T,)
    ref_rows = np.where(no_ref[:, None], valid, ref_rows)  # (T, N)
    if values.ndim == 2:
        return _robust_zscore_2d(values, valid, ref_rows, clip)
    out = np.empty(values.shape, dtype=np.float32)
    for k in range(values.shape[2]):  # one feature at a time keeps the memory small
        out[:, :, k] = _robust_zscore_2d(values[:, :, k], valid, ref_rows, clip)
    return out


def _robust_zscore_2d(
    x: np.ndarray, valid: np.ndarray, ref_rows: np.ndarray, clip: float
) -> np.ndarray:
    """:func:`cross_sectional_robust_zscore` of one feature ``[T, N]``."""
    x = np.where(valid, x, np.nan).astype(np.float32, copy=False)  # (T, N)
    xr = np.where(ref_rows, x, np.float32(np.nan))  # (T, N) reference rows only
    count = np.isfinite(xr).sum(axis=1)  # (T,)
    median = _nanmedian_last(xr, count)  # (T,)
    deviation = np.abs(xr - median[:, None])  # (T, N)
    scale = MAD_TO_STD * _nanmedian_last(deviation, count)  # (T,)
    tied = ~(scale > 0)
    if tied.any():  # fall back to the standard deviation around the median-free mean
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nansum(xr[tied], axis=1) / count[tied]
            std = np.sqrt(np.nansum((xr[tied] - mean[:, None]) ** 2, axis=1) / count[tied])
        scale[tied] = std
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (x - median[:, None]) / scale[:, None]  # (T, N)
    z = np.where(np.isfinite(x) & ~(scale[:, None] > 0), 0.0, z)
    return np.clip(z, -clip, clip, out=z).astype(np.float32, copy=False)


def _nanmedian_last(x: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN, given the finite ``count`` (NaN sort last).

    For odd counts both middle indices coincide; for even counts they straddle the middle.
    """
    s = np.sort(x, axis=-1)
    lo = np.take_along_axis(s, np.maximum((count - 1) // 2, 0)[..., None], axis=-1)[..., 0]
    hi = np.take_along_axis(s, np.maximum(count // 2, 0)[..., None], axis=-1)[..., 0]
    return np.where(count > 0, 0.5 * (lo + hi), np.nan).astype(x.dtype)
