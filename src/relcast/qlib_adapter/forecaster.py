"""relcast's stages on a qlib dataset, without importing qlib.

:class:`RelcastForecaster` reads any object that speaks ``DatasetH``'s interface (a
``segments`` dict of ``(start, end)`` and ``prepare(segments, col_set, data_key)`` returning
frames indexed by (datetime, instrument)) and runs what :func:`relcast.run.pipeline.run_steps`
runs, with the same fit functions and the same settings (a preset plus overrides):

1. Stage1 (cross-sectional Transformer) on the ``train`` segment, early-stopped on ``valid``;
2. the relationship store: Stage1's relationship features for every date, out-of-fold on the
   training dates (``relcast.relationships``' docstring says why);
3. Stage3 (the config's first ``stage3.models``) on own + relationship features (``hybrid``).

``predict`` returns Stage3's point forecast of the first label column (or Stage1's with
``forecast="stage1"``), in cross-sectional z-score units: a score to rank by, which is what
qlib's records read.

What relcast does differently from qlib's plain models, and why:

* Features come from qlib's *infer* data (``DK_I``) and labels from its *learn* data
  (``DK_L``, where qlib's label processors ran and rows without a label are dropped): a
  stock's features stay defined on dates whose label qlib dropped, so Stage3's sequences do
  not break there. A handler whose learn-only processors change *features* is not supported.
* Stage3 reads the ``lookback`` dates before each forecast, so ``predict`` prepares the data
  from the first fitted date to the segment's end and scores only the segment's rows. Dates
  seen by ``fit`` keep the relationship features they had there (out-of-fold on ``train``);
  newer dates are extracted with the Stage1 fitted on the whole training span, as
  ``relcast update`` does.
* The label's reach separates the training folds of the relationship store:
  ``data.label_delay`` (1 for qlib's ``Ref($close, -2) / Ref($close, -1) - 1``) plus the
  label columns' horizons, as in relcast's own split. qlib's segments are used as given.
* Instruments are the ones of the fitted data (Stage1 learns one identity embedding per
  stock); an instrument first seen at ``predict`` gets NaN.

Learned state lives in attributes ending in ``_``; qlib pickles the fitted model
(``R.save_objects``), relcast's own run folders never hold a pickle.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relcast.data.panel import RelcastDataError
from relcast.features.featureset import FeatureSet
from relcast.features.splits import Split
from relcast.qlib_adapter.frames import columns_of, grid_of, series_on, to_cube

# qlib's DataHandlerLP.DK_I / DK_L (the strings themselves: this module never imports qlib)
INFER, LEARN = "infer", "learn"
FORECASTS = ("hybrid", "stage1")


def _log(msg: str) -> None:
    print(f"[relcast] {msg}", flush=True)  # the pipeline's voice, inside qlib's log


@dataclass(eq=False)
class QlibData:
    """A span of a qlib dataset as relcast reads it: ``features`` (a one-group
    :class:`FeatureSet`, masked where a row is missing or not finite), ``labels``
    ``float32 [T, N, H]`` (None when not asked for) and the feature frame's ``rows``."""

    features: FeatureSet
    labels: np.ndarray | None
    rows: pd.Index


def segment_bounds(dataset: Any, segment: Any) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``(first, last)`` date of a segment name (``"test"``), a ``slice`` or a pair."""
    if isinstance(segment, str):
        segments = getattr(dataset, "segments", {})
        if segment not in segments:
            raise RelcastDataError(
                f"the dataset has no segment {segment!r}; its segments: {sorted(segments)}"
            )
        segment = segments[segment]
    if isinstance(segment, slice):
        segment = (segment.start, segment.stop)
    first, last = segment
    if first is None or last is None:
        raise RelcastDataError(f"segment {segment!r} needs a first and a last date")
    return pd.Timestamp(first), pd.Timestamp(last)


def read_span(
    dataset: Any,
    first: pd.Timestamp,
    last: pd.Timestamp,
    *,
    feature_names: list[str] | None = None,
    instruments: np.ndarray | None = None,
    with_labels: bool = False,
) -> QlibData:
    """Features (and labels) of the dates ``first .. last`` on one (date, instrument) grid."""
    span = slice(first, last)
    frame = dataset.prepare(span, col_set="feature", data_key=INFER)
    if frame.empty:
        raise RelcastDataError(f"the dataset has no feature rows between {first} and {last}")
    names = columns_of(frame)
    if feature_names is not None:
        missing = sorted(set(feature_names) - set(names))
        if missing:
            raise RelcastDataError(
                f"the dataset lacks features the model was fitted on: {missing[:10]}; "
                "predict with the handler the model was fitted with"
            )
        frame = frame.iloc[:, [names.index(n) for n in feature_names]]
        names = list(feature_names)
    grid = grid_of(frame.index, instruments)
    values = to_cube(frame, grid)  # (T, N, F)
    mask = np.isfinite(values).all(axis=-1)
    values[~mask] = np.nan
    features = FeatureSet(
        dates=grid.dates,
        symbols=grid.instruments,
        names=names,
        values=values,
        mask=mask,
        groups={"own": list(names)},
    )
    labels = None
    if with_labels:
        label_frame = dataset.prepare(span, col_set="label", data_key=LEARN)
        if label_frame.empty:
            raise RelcastDataError(f"the dataset has no labels between {first} and {last}")
        label_grid = grid_of(label_frame.index, grid.instruments)
        cube = to_cube(label_frame, label_grid)  # (T_label, N, H)
        labels = np.full(values.shape[:2] + cube.shape[2:], np.nan, dtype=np.float32)
        rows = np.searchsorted(grid.dates, label_grid.dates)
        keep = (rows < len(grid.dates)) & (
            grid.dates[rows.clip(0, len(grid.dates) - 1)] == label_grid.dates
        )
        labels[rows[keep]] = cube[keep]
    return QlibData(features, labels, frame.index)


def positions_between(dates: np.ndarray, first: pd.Timestamp, last: pd.Timestamp) -> np.ndarray:
    """Indices of ``dates`` inside ``[first, last]``."""
    d = np.asarray(dates, dtype="datetime64[ns]")
    return np.flatnonzero((d >= first.to_datetime64()) & (d <= last.to_datetime64()))


class RelcastForecaster:
    """relcast's three stages fitted on a qlib ``DatasetH`` (see the module docstring).

    Args:
        preset: relcast's preset (``"small"``, ``"medium"``, ``"large"``).
        settings: overrides of the preset, dotted keys or nested sections, as in a relcast
            config file (``{"stage1.max_epochs": 10, "data.label_delay": 1}``).
            ``data.horizons`` is the number of the dataset's label columns.
        forecast: ``"hybrid"`` (Stage3 on own + relationship features) or ``"stage1"``.
        sectors: ``{instrument: sector}`` for Stage1's and Stage3's sector embeddings
            (instruments without one share a sector); None: no sectors.
        index_instruments: instruments read as context (Stage1 attends to them) but neither
            trained on nor forecast, e.g. a market index added to the handler's universe.
    """

    def __init__(
        self,
        preset: str = "small",
        settings: dict[str, Any] | None = None,
        forecast: str = "hybrid",
        sectors: dict[str, str] | None = None,
        index_instruments: list[str] | tuple[str, ...] = (),
    ) -> None:
        if forecast not in FORECASTS:
            raise ValueError(f"forecast must be one of {FORECASTS}, got {forecast!r}")
        self.preset = preset
        self.settings = dict(settings or {})
        self.forecast = forecast
        self.sectors = dict(sectors or {})
        self.index_instruments = [str(s) for s in index_instruments]

    # ------------------------------------------------------------------ helpers
    def _config(self, horizons: int):
        from relcast.config import load_config

        return load_config(self.preset, values={**self.settings, "data.horizons": horizons})

    def _sector_labels(self, instruments: np.ndarray) -> np.ndarray | None:
        if not self.sectors:
            return None
        return np.array([str(self.sectors.get(s, "unknown")) for s in instruments])

    def _stage1_fit(self, config, stage1_config, target: np.ndarray, out_dir: Path):
        """How each Stage1 is trained: the run's specs (as the pipeline reads them from the
        config), for one process, logging under ``out_dir``."""
        from relcast import distributed
        from relcast.relationships.store import Stage1Fit
        from relcast.training.specs import Stage1Spec, TrainerSpec

        trainer = TrainerSpec.from_settings(distributed.trainer_settings(config.trainer))
        return Stage1Fit(
            config=stage1_config,
            spec=Stage1Spec.from_settings(config.stage1, config.trainer.seed),
            trainer=trainer.logging_to(out_dir),
            sector_ids=self._sector_labels(self.instruments_),
            target=target,
        )

    def _extractor(self, config, instruments: np.ndarray, target: np.ndarray):
        """The config's relationship extractor (as the run context builds it)."""
        from relcast.relationships.store import extractor_from_spec
        from relcast.training.specs import ExtractorSpec
        from relcast.training.stage1 import encode_sectors

        labels = self._sector_labels(instruments)
        sector_ids = None if labels is None else encode_sectors(labels, len(instruments))[0]
        return extractor_from_spec(ExtractorSpec.from_config(config), ~target, sector_ids)

    # ------------------------------------------------------------------ fit
    def fit(self, dataset: Any) -> RelcastForecaster:
        """Fit Stage1, the relationship store and Stage3 on the ``train`` and ``valid``
        segments of ``dataset``."""
        from relcast.models.cross_sectional import Stage1Config
        from relcast.training.stage1 import encode_sectors, fit_stage1

        train_first, train_last = segment_bounds(dataset, "train")
        valid_first, valid_last = segment_bounds(dataset, "valid")
        data = read_span(dataset, train_first, max(train_last, valid_last), with_labels=True)
        f, labels = data.features, data.labels
        config = self._config(horizons=labels.shape[2])
        instruments = f.symbols
        target = ~np.isin(instruments, self.index_instruments)
        split = Split(
            train=positions_between(f.dates, train_first, train_last),
            valid=positions_between(f.dates, valid_first, valid_last),
            test=np.zeros(0, dtype=np.int64),
            embargo=config.span_embargo,
            dates=f.dates,
        )
        sector_labels = self._sector_labels(instruments)
        num_sectors = (
            0 if sector_labels is None else encode_sectors(sector_labels, len(instruments))[1]
        )
        stage1_labels = labels[..., : min(config.stage1.horizons, labels.shape[2])]
        stage1_config = Stage1Config.from_settings(
            config.stage1,
            num_features=len(f.names),
            num_stocks=len(instruments),
            num_sectors=num_sectors,
            horizons=stage1_labels.shape[2],
        )
        self.instruments_ = instruments
        with tempfile.TemporaryDirectory(prefix="relcast-qlib-") as work:
            fit = self._stage1_fit(config, stage1_config, target, Path(work) / "stage1")
            result = fit_stage1(
                f, stage1_labels, split, fit.config, fit.spec, fit.trainer,
                sector_ids=fit.sector_ids, target=fit.target,
            )  # fmt: skip
            self.config_ = config
            self.stage1_ = result.model
            self.feature_names_ = list(f.names)
            self.dates_ = f.dates
            self.target_ = target
            self.stage1_val_rank_ic_ = result.best_val_rank_ic
            _log(
                f"Stage1 on {len(instruments)} instruments x {len(f.names)} features: best "
                f"val rank IC {result.best_val_rank_ic:.4f} in {result.train_seconds:.0f}s"
            )
            if self.forecast == "hybrid":
                self._fit_hybrid(f, labels, stage1_labels, split, Path(work), result.history)
        return self

    def _fit_hybrid(self, f: FeatureSet, labels, stage1_labels, split, work: Path, history):
        """The relationship store and Stage3 (what ``Pipeline.extract`` and ``stage3`` do)."""
        from relcast import distributed
        from relcast.relationships.folds import best_epoch_count
        from relcast.relationships.store import StorePlan, build_relationship_store
        from relcast.training.specs import Stage3Spec, TrainerSpec
        from relcast.training.stage3 import fit_stage3
        from relcast.training.stage3_inputs import assemble_inputs

        config, target = self.config_, self.target_
        r = config.relationships
        fold_epochs = r.oof_epochs
        if fold_epochs == "early_stopping":
            fold_epochs = None
        elif fold_epochs == "best":
            fold_epochs = best_epoch_count(history) or None
        store = build_relationship_store(
            f,
            stage1_labels,
            split,
            self._extractor(config, self.instruments_, target),
            self._stage1_fit(config, self.stage1_.config, target, work / "stage1_folds"),
            StorePlan(
                n_folds=r.oof_folds,
                oof=r.oof_folds > 0,
                embargo=split.embargo,
                fold_epochs=fold_epochs,
            ),
            full_model=self.stage1_,
        )
        self.extractor_ = store.full_extractor
        self.relationship_names_ = list(store.names)
        self.relationships_ = np.asarray(store.values, dtype=np.float32)  # (T, N, K)
        s = config.stage3
        model = s.models[0]
        inputs = assemble_inputs(
            f,
            (self.relationships_, self.relationship_names_),
            "hybrid",
            sectors=self._sector_labels(self.instruments_),
        )
        spec = Stage3Spec.from_settings(s, model, config.trainer.seed)
        trainer = TrainerSpec.from_settings(distributed.trainer_settings(config.trainer))
        result = fit_stage3(
            model,
            inputs,
            labels,
            split,
            spec,
            trainer.logging_to(work / "stage3"),
            stocks=list(self.instruments_[target]),
            index_symbols=list(self.instruments_[~target]),
        )
        self.stage3_, self.stage3_spec_ = result.model, spec
        self.stage3_val_rank_ic_ = result.best_val_rank_ic
        _log(
            f"Stage3 {model} on {inputs.num_features} inputs ({len(store.names)} relationship "
            f"columns): best val rank IC {result.best_val_rank_ic:.4f}"
        )

    # ------------------------------------------------------------------ predict
    def predict(self, dataset: Any, segment: Any = "test") -> pd.Series:
        """The forecast for every row of ``segment``, indexed like qlib's
        ``dataset.prepare(segment, col_set="feature")`` ((datetime, instrument)), NaN where
        there is none (a masked row, an instrument not fitted, too short a history)."""
        if not hasattr(self, "stage1_"):
            raise RuntimeError("the model is not fitted yet: call fit(dataset) first")
        first, last = segment_bounds(dataset, segment)
        data = read_span(
            dataset,
            min(first, pd.Timestamp(self.dates_[0])),
            last,
            feature_names=self.feature_names_,
            instruments=self.instruments_,
        )
        f = data.features
        wanted = positions_between(f.dates, first, last)
        if self.forecast == "stage1":
            from relcast.models.cross_sectional import predict_stage1

            point = predict_stage1(self.stage1_, f)["pred"][..., 0]  # (T, N)
        else:
            point = self._predict_hybrid(f, wanted)
        point = np.where(self.target_[None, :], point, np.nan)  # no forecast for the index
        # the segment's rows of the frame: what dataset.prepare(segment) indexes
        when = data.rows.get_level_values("datetime")
        rows = data.rows[(when >= first) & (when <= last)]
        return series_on(point, f.dates, self.instruments_, rows)

    def _relationships_on(self, f: FeatureSet) -> np.ndarray:
        """``float32 [T, N, K]`` relationship features of ``f``'s dates: the fitted ones
        where ``fit`` saw the date, the full Stage1's elsewhere."""
        values = np.full((len(f.dates), len(f.symbols), len(self.relationship_names_)), np.nan,
                         dtype=np.float32)  # fmt: skip
        pos = np.searchsorted(self.dates_, f.dates).clip(0, len(self.dates_) - 1)
        seen = self.dates_[pos] == f.dates
        values[seen] = self.relationships_[pos[seen]]
        new = np.flatnonzero(~seen)
        if len(new):
            rel = self.extractor_.extract(self.stage1_, f, new)
            fresh = np.where(rel.mask[..., None], rel.values, np.nan)
            values[new] = fresh
        return values

    def _predict_hybrid(self, f: FeatureSet, wanted: np.ndarray) -> np.ndarray:
        from relcast.training.stage3 import predict_stage3
        from relcast.training.stage3_inputs import assemble_inputs

        inputs = assemble_inputs(
            f,
            (self._relationships_on(f), self.relationship_names_),
            "hybrid",
            sectors=self._sector_labels(self.instruments_),
        )
        out = predict_stage3(
            self.stage3_, inputs, wanted, chunk_length=self.stage3_spec_.chunk_length
        )
        return out["point"][..., 0]  # (T, N), NaN where no window ends
