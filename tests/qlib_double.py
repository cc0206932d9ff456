"""A test double for the one missing package: qlib (pyqlib does not install beside the lock,
see tests/test_qlib_adapter.py). ``FrameDataset`` speaks the part of ``DatasetH`` that
models use, as qlib 0.9.7 documents it: ``segments`` (name -> (start, end)) and
``prepare(segments, col_set, data_key)`` returning a frame indexed by (datetime, instrument)
with ``("feature", name)`` / ``("label", name)`` columns; ``data_key="learn"`` drops rows
without a label (qlib's ``DropnaLabel`` learn processor), ``"infer"`` keeps every row.
``fake_qlib_modules`` is the ``qlib.model.base.Model`` base class, nothing more."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd


class FrameDataset:
    """``DatasetH``'s ``segments`` and ``prepare`` over one in-memory frame."""

    def __init__(self, frame: pd.DataFrame, segments: dict[str, tuple[str, str]]) -> None:
        self.frame = frame.sort_index()
        self.segments = dict(segments)

    def _rows(self, segment) -> pd.DataFrame:
        if isinstance(segment, str):
            segment = self.segments[segment]
        if isinstance(segment, slice):
            segment = (segment.start, segment.stop)
        first, last = (pd.Timestamp(s) for s in segment)
        when = self.frame.index.get_level_values("datetime")
        return self.frame[(when >= first) & (when <= last)]

    def prepare(self, segments, col_set="__all", data_key="infer"):
        if isinstance(segments, list | tuple) and all(s in self.segments for s in segments):
            return [self.prepare(s, col_set, data_key) for s in segments]
        rows = self._rows(segments)
        if data_key == "learn":  # DropnaLabel
            rows = rows[rows["label"].notna().all(axis=1).to_numpy()]
        if col_set == "__all":
            return rows.droplevel(0, axis=1)
        return rows.loc(axis=1)[col_set]


def frame_from_arrays(dates, instruments, values, names, labels, mask) -> pd.DataFrame:
    """qlib's layout of ``values [T, N, F]`` and ``labels [T, N, H]`` at the unmasked cells."""
    t, n = np.nonzero(mask)
    index = pd.MultiIndex.from_arrays(
        [pd.DatetimeIndex(dates[t]), np.asarray(instruments)[n]], names=["datetime", "instrument"]
    )
    columns = [("feature", c) for c in names]
    columns += [("label", f"LABEL{h}") for h in range(labels.shape[2])]
    data = np.concatenate([values[t, n], labels[t, n]], axis=1)
    return pd.DataFrame(data, index=index, columns=pd.MultiIndex.from_tuples(columns))


def fake_qlib_modules() -> dict[str, types.ModuleType]:
    """``sys.modules`` entries for ``qlib.model.base.Model`` (a plain base class)."""
    qlib, model, base = (types.ModuleType(n) for n in ("qlib", "qlib.model", "qlib.model.base"))

    class Model:  # qlib.model.base.Model's contract: fit(dataset), predict(dataset, segment)
        def fit(self, dataset):
            raise NotImplementedError

        def predict(self, dataset, segment="test"):
            raise NotImplementedError

    base.Model = Model
    qlib.model, model.base = model, base
    return {"qlib": qlib, "qlib.model": model, "qlib.model.base": base}
