"""The relationship store: Stage1 relationship features for every (date, stock), extracted once.

Stage3 reads ``lookback`` dates of relationship features per sample; running Stage1 60 times
per sample would be absurd, so :func:`build_relationship_store` runs the extractor once per
date and keeps ``values [T, N, K]``. On disk it is ``data_with_relationships`` (Parquet): own
features + relationship features + calendar features per (date, symbol).

Why out-of-fold
---------------
Stage1 is trained on the training span's labels. Its outputs on those same dates have seen
those labels (it fitted them), so relationship features there are better than anything it can
produce on new dates; Stage3 trained on them learns to trust a signal that will be weaker on
valid/test data. This is the stacking leak. The store therefore uses *purged, embargoed,
time-ordered K-fold*: the training span is cut into ``n_folds`` contiguous folds; for fold k a
Stage1 is trained on the other folds minus ``embargo`` dates on each side of fold k (so no
training label window ``s .. s+H`` reaches a date of fold k, and features right after the fold,
which see fold k's realised prices, are dropped too), and fold k's dates are extracted with
that model. Dates outside the training span (valid, test, later) are extracted with the model
trained on the full training span, which is also the model used for inference. ``oof=False``
uses the full model everywhere: fast, and leaky, for comparisons only.

Coordinates: attention columns (V1) and cosine similarities (V3) mean the same thing in every
model, but learned embeddings (V2 ``rel_emb_*``, V3 ``ctr_*``) live in an arbitrary basis per
model. With ``align=True`` each fold model's embedding blocks are rotated onto the full model's
basis by orthogonal Procrustes, fitted on that fold model's own training dates (never on fold
k's dates). The rotation is a K x K orthogonal matrix; it carries next to no information about
fold k's labels and makes the features mean one thing across folds for Stage3. It is fitted on
at most ``ALIGN_DATES`` evenly spaced dates of those (64 dates x N stocks rows for a K <= 64
rotation), not on all of them: extracting every training date again per fold cost as much as
a training epoch at 1,026 stocks.

Cost
----
The store trains ``n_folds`` extra Stage1 models. With ``fold_epochs`` they train for that
many epochs and are validated once, at the end (no early stopping, no validation pass per
epoch); the pipeline passes the full model's best epoch count (``relationships.oof_epochs``).
Warm-starting fold models from the full model would be cheaper still, and would leak: the
full model trained on fold k's labels.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from relcast.config.stages import BASE_EXTRACTORS, extractor_parts
from relcast.features.featureset import FeatureSet
from relcast.models.extractors import (
    AttentionExtractor,
    CombinedExtractor,
    EmbeddingExtractor,
    RelationshipExtractor,
    RelationshipFeatures,
    ScoreExtractor,
)
from relcast.relationships.blocks import (
    BLOCK_BYTES,
    extract_blocks,
    open_values,
    release,
    write_frame_parquet,
)
from relcast.relationships.folds import (
    alignable_blocks,
    log_fold,
    procrustes_rotation,
    purged_folds,
)
from relcast.training.contrastive import ContrastiveExtractor, ContrastiveSettings
from relcast.training.specs import ExtractorSpec, Stage1Spec, TrainerSpec

FULL_MODEL = -1
ALIGN_DATES = 64
"""Most dates of a fold model's own training span its Procrustes rotation is fitted on."""


@dataclass(eq=False)
class RelationshipStore:
    """Relationship features of every (date, stock) and which model produced them.

    Attributes:
        dates, symbols: as the feature set's.
        names: the K relationship column names.
        values: ``float32 [T, N, K]`` (NaN where ``mask`` is False).
        mask: ``bool [T, N]``.
        fold_of: ``int [T]``: the fold model that produced each date, or ``-1`` for the model
            trained on the full training span.
        features: the feature set the store was built from (own and calendar columns of
            ``data_with_relationships``); may be None for a store read back from disk.
        models: one record per Stage1 model: ``fold``, ``train_index`` (dates whose labels it
            trained on), ``extracted_index`` (dates it produced), ``train_seconds``,
            ``best_val_rank_ic``.
        full_model, full_extractor: the full-span Stage1 model and its fitted extractor, to
            extract new dates at inference (not saved to Parquet).
    """

    dates: np.ndarray
    symbols: np.ndarray
    names: list[str]
    values: np.ndarray
    mask: np.ndarray
    fold_of: np.ndarray
    features: FeatureSet | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    full_model: Any = None
    full_extractor: RelationshipExtractor | None = None
    build_seconds: float = 0.0

    def relationship_features(self) -> RelationshipFeatures:
        """The store's arrays as :class:`RelationshipFeatures`."""
        return RelationshipFeatures(self.dates, self.symbols, self.names, self.values, self.mask)

    def to_frame(
        self, feature_groups: Sequence[str] = ("own", "calendar"), dates: slice | None = None
    ) -> pd.DataFrame:
        """``data_with_relationships``: one row per valid (date, symbol) with ``date, symbol,
        fold``, the feature set's ``feature_groups`` columns, then the relationship columns
        (of the ``dates`` slice only, when given: the Parquet writer's blocks)."""
        dates = slice(0, len(self.dates)) if dates is None else dates
        t, n = np.nonzero(self.mask[dates])
        a = dates.start or 0
        parts = [
            pd.DataFrame(
                {"date": self.dates[a + t], "symbol": self.symbols[n], "fold": self.fold_of[a + t]}
            )
        ]
        if self.features is not None:
            groups = [g for g in feature_groups if self.features.groups.get(g)]
            names = [c for g in groups for c in self.features.groups[g]]
            if names:
                block = np.asarray(self.features.values[dates])  # (t, N, F)
                cols = block[:, :, self.features.columns(names)][t, n]
                parts.append(pd.DataFrame(cols, columns=names))
        parts.append(pd.DataFrame(np.asarray(self.values[dates])[t, n], columns=self.names))
        return pd.concat(parts, axis=1)

    def write_parquet(
        self, path: str | Path, feature_groups: Sequence[str] = ("own", "calendar")
    ) -> Path:
        """Write ``data_with_relationships`` a block of dates at a time, atomically
        (:func:`~relcast.relationships.blocks.write_frame_parquet`)."""
        return write_frame_parquet(self, path, feature_groups)

    @classmethod
    def read_parquet(cls, path: str | Path) -> RelationshipStore:
        """Read the relationship part of a store written by :meth:`write_parquet`.

        Dates are those with at least one row; ``features`` is None.
        """
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(b"relcast", b"{}"))
        if "relationship_names" not in meta:
            raise ValueError(f"{path}: not a relcast relationship store (no 'relcast' metadata)")
        frame = table.to_pandas()
        names = meta["relationship_names"]
        symbols = np.asarray(meta["symbols"])
        dates = np.unique(frame["date"].to_numpy(dtype="datetime64[ns]"))
        t = np.searchsorted(dates, frame["date"].to_numpy(dtype="datetime64[ns]"))
        n = pd.Index(symbols).get_indexer(frame["symbol"].astype(str))
        values = np.full((len(dates), len(symbols), len(names)), np.nan, dtype=np.float32)
        mask = np.zeros((len(dates), len(symbols)), dtype=bool)
        values[t, n] = frame[names].to_numpy(dtype=np.float32)
        mask[t, n] = True
        fold_of = np.full(len(dates), FULL_MODEL, dtype=np.int64)
        fold_of[t] = frame["fold"].to_numpy()
        return cls(dates, symbols, list(names), values, mask, fold_of)


# ----------------------------------------------------------------------------- build
def _with_train(split: Any, train_index: np.ndarray) -> Any:
    """``split`` with its training dates replaced (for a fold model's extractor)."""
    if dataclasses.is_dataclass(split):
        return dataclasses.replace(split, train=train_index)
    return SimpleNamespace(**{**vars(split), "train": train_index})


@dataclass(frozen=True)
class Stage1Fit:
    """How every Stage1 of a store is trained: the model's sizes (``config``, None for
    :func:`~relcast.training.stage1.fit_stage1`'s default), the training ``spec``, the
    ``trainer`` (its ``out_dir``: the folder of the models' checkpoints and logs,
    ``fold_<k>/`` and ``full/``; a temporary folder, deleted afterwards, when None), the
    per-stock ``sector_ids`` and the ``target`` stocks that count in losses."""

    config: Any
    spec: Stage1Spec
    trainer: TrainerSpec
    sector_ids: Any = None
    target: np.ndarray | None = None


@dataclass(frozen=True)
class StorePlan:
    """What :func:`build_relationship_store` builds.

    Attributes:
        n_folds: folds over the training span.
        embargo: dates purged on each side of a fold; default H (pass H + label delay when
            labels are delayed).
        oof: False uses the full model for every date (leaky; for comparisons).
        align: rotate fold models' learned-embedding blocks onto the full model's basis.
        fold_epochs: train each fold model for exactly this many epochs, validating once at
            the end (e.g. the full model's best epoch count); None: early stopping on the
            validation Rank IC like the full model, with a validation pass every epoch.
        values_path: extract by blocks of dates into a ``float32 [T, N, K]`` ``.npy`` memory
            map written there (``data.store: memmap``; the store's ``values`` is that map);
            None: in memory, every date at once.
        table_path: also write ``data_with_relationships`` Parquet there.
        extract: False fits the models and their extractors but extracts no date (the
            store's ``values``/``mask`` None, ``names`` empty): a rank other than 0 under
            DDP, which joins every fit but keeps no features.
    """

    n_folds: int = 3
    embargo: int | None = None
    oof: bool = True
    align: bool = True
    fold_epochs: int | None = None
    values_path: str | Path | None = None
    table_path: str | Path | None = None
    extract: bool = True


def build_relationship_store(
    features: FeatureSet,
    labels: np.ndarray,
    split: Any,
    extractor: RelationshipExtractor,
    fit: Stage1Fit,
    plan: StorePlan = StorePlan(),
    *,
    full_model: Any = None,
) -> RelationshipStore:
    """Train Stage1 model(s) and extract relationship features for every date.

    Out-of-fold by default (see the module docstring for why): fold k of the training span is
    extracted by a Stage1 trained on the other folds with ``plan.embargo`` dates purged around
    fold k; every other date by the Stage1 trained on the full training span (``fold_of = -1``).

    Args:
        features: the feature set (Stage1 reads all its columns).
        labels: ``[T, N, H]`` forward returns.
        split: chronological split with ``train`` and ``valid`` (for Stage1's early stopping).
        extractor: an unfitted extractor; a fresh copy is fitted per Stage1 model.
        fit: how each Stage1 is trained (:class:`Stage1Fit`; one seed for every model).
        plan: folds, alignment and where the values go (:class:`StorePlan`).
        full_model: an already trained Stage1 on the full training span (``split.train``) to
            reuse instead of training it again; fold models are still trained here.
    """
    from relcast.training import stage1 as stage1_training

    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim == 2:
        labels = labels[..., None]
    H = labels.shape[2]
    embargo = H if plan.embargo is None else int(plan.embargo)
    fold_epochs, extract, n_folds = plan.fold_epochs, plan.extract, plan.n_folds
    if fold_epochs is not None and int(fold_epochs) < 1:
        raise ValueError(f"fold_epochs must be >= 1 (None: early stopping), got {fold_epochs}")
    T, N = features.mask.shape
    train = np.sort(np.asarray(split.train, dtype=np.int64))
    block = None if plan.values_path is None else BLOCK_BYTES
    start = time.perf_counter()

    out_dir = fit.trainer.out_dir
    tmp_dir = tempfile.TemporaryDirectory(prefix="relcast-store-") if out_dir is None else None
    root = Path(tmp_dir.name if tmp_dir is not None else out_dir)
    try:

        def fit_and_extract(
            name: str, fit_index: np.ndarray, model: Any = None, fixed_epochs: int | None = None,
            label: str = "Stage1 full span",
        ) -> tuple[Any, Any, dict]:  # fmt: skip
            spec = fit.spec
            if fixed_epochs is not None:  # no early stopping: one validation, after the last
                epochs = int(fixed_epochs)
                spec = dataclasses.replace(
                    spec, max_epochs=epochs, patience=epochs + 1, validate_every=epochs
                )
            if model is None:
                result = stage1_training.fit_stage1(
                    features,
                    labels,
                    _with_train(split, fit_index),
                    fit.config,
                    spec,
                    dataclasses.replace(fit.trainer.logging_to(root / name), label=label),
                    sector_ids=fit.sector_ids,
                    target=fit.target,
                )
            else:  # reuse the caller's full-span model
                result = SimpleNamespace(
                    model=model.eval(), train_seconds=0.0, best_val_rank_ic=float("nan")
                )
            # The extractor sees only the labels this model trained on (V3's correlation
            # positives are built from realised returns, i.e. from labels).
            seen = np.full_like(labels, np.nan)
            seen[fit_index] = labels[fit_index]
            ext = extractor.clone()
            ext.fit(result.model, features, seen, _with_train(split, fit_index))
            record = {
                "train_index": fit_index,
                "train_seconds": float(result.train_seconds),
                "best_val_rank_ic": float(result.best_val_rank_ic),
                "epochs": len(getattr(result, "history", None) or []),
            }
            return result.model, ext, record

        full_model, full_ext, full_record = fit_and_extract("full", train, full_model)
        values = mask = full_ref = None
        names: list[str] = []  # stays empty without extraction: no alignment blocks either
        # out of fold, the fold models give every training date its values: the full model
        # extracts the others only (for the attention-reading extractors, half the cost)
        folded = plan.oof and n_folds > 0
        need = np.setdiff1d(np.arange(T), train) if folded else np.arange(T)
        everything = need if extract else need[:0]
        for chunk, rel in extract_blocks(full_ext, full_model, features, everything, block):
            if values is None:
                names = list(rel.names)
                values = open_values(plan.values_path, (T, N, len(names)))  # (T, N, K)
                mask = np.zeros((T, N), dtype=bool)
            if block is None and not folded:  # in memory, every date: the alignment reference
                full_ref = rel
            values[chunk] = rel.values
            mask[chunk] = rel.mask
            release(values)
        fold_of = np.full(T, FULL_MODEL, dtype=np.int64)
        models = []

        if plan.oof and n_folds > 0:
            blocks = alignable_blocks(names) if plan.align else []
            folds_start = time.perf_counter()
            for k, (fit_index, fold_index) in enumerate(purged_folds(train, n_folds, embargo)):
                model_k, ext_k, record = fit_and_extract(
                    f"fold_{k}", fit_index, fixed_epochs=fold_epochs,
                    label=f"Stage1 fold {k + 1}/{n_folds}",
                )  # fmt: skip
                rotations = []
                if blocks:
                    # Rotation fitted on the fold model's own training dates (not fold k's).
                    align_index = fit_index
                    if len(fit_index) > ALIGN_DATES:  # evenly spaced, distinct
                        pick = np.linspace(0, len(fit_index) - 1, ALIGN_DATES).round()
                        align_index = fit_index[pick.astype(np.int64)]
                    own = ext_k.extract(model_k, features, align_index)
                    if full_ref is not None:
                        ref, ref_mask = full_ref.values[align_index], full_ref.mask[align_index]
                    else:  # the full model's values there (the map may hold fold values now)
                        ref_rel = full_ext.extract(full_model, features, align_index)
                        ref, ref_mask = ref_rel.values, ref_rel.mask
                    both = own.mask & ref_mask
                    for cols in blocks:
                        rot = procrustes_rotation(own.values[both][:, cols], ref[both][:, cols])
                        rotations.append((cols, rot.astype(np.float32)))
                mine = fold_index if extract else fold_index[:0]
                for chunk, rel in extract_blocks(ext_k, model_k, features, mine, block):
                    if rel.names != names:
                        raise RuntimeError("fold and full extractors produced different columns")
                    fold_values = rel.values.copy()  # (t, N, K)
                    for cols, rot in rotations:
                        fold_values[..., cols] = fold_values[..., cols] @ rot
                    fold_values[~rel.mask] = np.nan
                    values[chunk] = fold_values
                    mask[chunk] = rel.mask
                    release(values)
                fold_of[fold_index] = k
                models.append({"fold": k, "extracted_index": fold_index, **record})
                if fit.trainer.progress:
                    log_fold(k, n_folds, record, time.perf_counter() - folds_start)

        models.append(
            {
                "fold": FULL_MODEL,
                "extracted_index": np.flatnonzero(fold_of == FULL_MODEL),
                **full_record,
            }
        )
    finally:
        if tmp_dir is not None:
            tmp_dir.cleanup()

    if block is None and extract:
        values[~mask] = np.nan  # (blocks set theirs as they were written)
    store = RelationshipStore(
        dates=features.dates,
        symbols=features.symbols,
        names=names,
        values=values,
        mask=mask,
        fold_of=fold_of,
        features=features,
        models=models,
        full_model=full_model,
        full_extractor=full_ext,
        build_seconds=time.perf_counter() - start,
    )
    if plan.table_path is not None:
        store.write_parquet(plan.table_path)
    return store


# ----------------------------------------------------------------------------- by name
ADD_ONS = {"method": "bottleneck", "n_components": 16, "stage1_score": False,
           "neighbours": False, "orthogonal": False, "lead_lag_lags": 3}  # fmt: skip
""":func:`make_extractor`'s settings besides V3's, with their defaults."""


def make_extractor(
    name: str,
    *,
    is_index: np.ndarray | None = None,
    sector_ids: np.ndarray | None = None,
    **settings: Any,
) -> RelationshipExtractor:
    """Extractor by name: any of :data:`BASE_EXTRACTORS` or several joined with ``+``
    (``"v1+v2"``, ``"v2+lead_lag"``), side by side.

    ``is_index``/``sector_ids`` go to V1 (and ``sector_ids`` to V3). ``settings`` (defaults in
    :data:`ADD_ONS`): ``method``/``n_components`` go to V2, ``lead_lag_lags`` to lead-lag;
    ``stage1_score`` adds Stage1's own forecast as a column (:class:`ScoreExtractor`),
    ``neighbours`` the attention-weighted own indicators of the other stocks
    (:class:`relcast.models.neighbours.NeighbourExtractor`); ``orthogonal`` removes from all
    of them their fit on the own columns
    (:class:`relcast.models.neighbours.OrthogonalExtractor`); any other setting
    (``label_delay``, ``steps``, ...) goes to V3.
    """
    from relcast.models.neighbours import NeighbourExtractor, OrthogonalExtractor

    add = {key: settings.pop(key, default) for key, default in ADD_ONS.items()}
    parts = extractor_parts(name)
    unknown = [p for p in parts if p not in BASE_EXTRACTORS]
    if unknown or not parts:
        raise ValueError(f"unknown extractor {name!r}; choose from {list(BASE_EXTRACTORS)}")
    chosen = [
        _extractor_by_name(part, is_index=is_index, sector_ids=sector_ids, add=add, v3=settings)
        for part in parts
    ]
    chosen += [ScoreExtractor()] if add["stage1_score"] else []
    chosen += [NeighbourExtractor()] if add["neighbours"] else []
    extractor = CombinedExtractor(chosen) if len(chosen) > 1 else chosen[0]
    return OrthogonalExtractor(extractor) if add["orthogonal"] else extractor


def extractor_from_spec(
    spec: ExtractorSpec, is_index: np.ndarray | None, sector_ids: np.ndarray | None
) -> RelationshipExtractor:
    """An unfitted extractor as ``spec`` describes it, for a universe whose index symbols
    and encoded sectors are given (:func:`make_extractor`)."""
    return make_extractor(
        spec.kind,
        is_index=is_index,
        sector_ids=sector_ids,
        method=spec.method,
        n_components=spec.n_components,
        stage1_score=spec.stage1_score,
        neighbours=spec.neighbours,
        orthogonal=spec.orthogonal,
        lead_lag_lags=spec.lead_lag_lags,
        label_delay=spec.label_delay,
        seed=spec.seed,
        **spec.v3,  # V3's settings (the other extractors take none)
    )


def _extractor_by_name(
    name: str, *, is_index, sector_ids, add: dict[str, Any], v3: dict[str, Any]
) -> RelationshipExtractor:
    from relcast.models.neighbours import LeadLagExtractor, LeaveSelfOutExtractor

    if name == "leave_self_out":
        return LeaveSelfOutExtractor()
    if name == "lead_lag":
        return LeadLagExtractor(lags=add["lead_lag_lags"])
    if name == "v1":
        return AttentionExtractor(is_index=is_index, sector_ids=sector_ids)
    if name == "v2":
        return EmbeddingExtractor(method=add["method"], n_components=add["n_components"])
    if name == "v3":
        v3 = dict(v3)
        label_delay = v3.pop("label_delay", 0)
        return ContrastiveExtractor(
            ContrastiveSettings(**v3), label_delay=label_delay, sector_ids=sector_ids
        )
    raise ValueError(f"unknown extractor {name!r}; choose from {list(BASE_EXTRACTORS)}")
