"""Stage3 training: any registered temporal model on own / hybrid / rawconcat inputs.

Read top to bottom:

1. :func:`assemble_inputs` picks the input columns of the three feature sets the design
   compares:

   - ``own``: the stock's own indicators + index features + calendar (+ regime one-hots if
     the features have them),
   - ``hybrid``: ``own`` + the stock's Stage1 relationship features (the design's proposal),
   - ``rawconcat``: every stock's own indicators side by side at each date + index +
     calendar (the design's "original approach", e.g. 20 x 30 = 600 dims). It is gathered
     by the loader batch by batch, never stored per target stock.

2. :class:`Stage3Module` (Lightning) holds the loss and the validation metric; the model is
   a plain ``nn.Module`` from the registry and never knows it is being trained.
   Loss: pinball loss over the quantiles (squared error in point mode) on labels that are
   **cross-sectionally normalised** per date and horizon (z-score over the stocks with a
   label, :func:`relcast.features.normalize_labels_cross_section`), the field's default: it
   removes the market-wide move that no stock-ranking model
   can use and keeps the loss scale stable across calm and volatile dates. Pass
   ``label_norm="none"`` to train on raw forward returns (quantiles are then in return units).
   ``val_rank_ic``: the point forecasts of every valid-split window are put into a
   ``[T, N]`` matrix and the mean daily Rank IC of horizon 1 is taken.
   Training and validation run on sequence batches by default: chunks of ``chunk_length``
   steps of each stock's span, scored at every window end past a ``lookback - 1`` step
   burn-in (``origin``), so one pass yields ~C forecasts instead of one; the loss is the same
   mean over the same scored (date, stock) samples (:mod:`relcast.training.loader`).

3. :func:`fit_stage3` trains with :func:`relcast.training.common.make_trainer` (early stopping
   on ``val_rank_ic``, best checkpoint restored), :func:`predict_stage3` forecasts every
   window of a set of dates into ``[T, N, H, Q]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relcast.features.featureset import FeatureSet
from relcast.features.labels import (
    normalize_labels_cross_section,
    rank_normalize_labels_cross_section,
)
from relcast.training.loader import WindowLoader

FEATURE_SETS = ("own", "hybrid", "rawconcat")
CHUNK_LENGTH = 128
"""Default chunk length of sequence training and prediction (burn-in included)."""
EVAL_BATCH_FLOATS = 2**25
"""Input floats per evaluation batch at most (128 MB): ``rawconcat`` on a large universe is
N * F_own wide, and an evaluation batch must not grow with it."""


def eval_batch_size(want: int, num_features: int, lookback: int, chunk_length: int | None) -> int:
    """``want`` scored samples per evaluation batch, fewer if their input would exceed
    :data:`EVAL_BATCH_FLOATS` (a sample costs ``lookback`` steps as a window, about
    ``C / (C - lookback + 1)`` steps in a chunk)."""
    if chunk_length is None:
        steps = float(lookback)
    else:
        C = max(chunk_length, 2 * lookback)
        steps = C / (C - lookback + 1)
    return max(1, min(int(want), int(EVAL_BATCH_FLOATS / (num_features * steps))))


LABEL_NORMS = ("cross_section", "cs_rank", "none")


# ----------------------------------------------------------------------------- inputs


@dataclass(eq=False)
class Stage3Inputs:
    """What a Stage3 model reads, per (date, stock), for one feature set.

    Attributes:
        feature_set: ``"own"``, ``"hybrid"`` or ``"rawconcat"``.
        dates, symbols: ``[T]``, ``[N]``.
        values: ``float32 [T, N, F_stock]``, the target stock's own columns at each date (for
            ``rawconcat`` only index + calendar; the all-stocks block is ``concat``).
        valid: ``bool [T, N]``, every column of ``values`` is defined.
        names: the model's F_in input names, in the order of the batch's ``x`` axis.
        groups: name lists per group (``own``, ``index``, ``calendar``, ``relationship``,
            ``all_own``).
        sector_ids: ``int [N]`` sector index of every stock.
        concat: ``float32 [T, N, F_own]`` every stock's own indicators (``rawconcat`` only),
            0 where the stock is not valid.
    """

    feature_set: str
    dates: np.ndarray
    symbols: np.ndarray
    values: np.ndarray
    valid: np.ndarray
    names: list[str]
    groups: dict[str, list[str]]
    sector_ids: np.ndarray
    concat: np.ndarray | None = None

    @property
    def num_features(self) -> int:
        """F_in, the width of the model input."""
        return len(self.names)

    @property
    def num_sectors(self) -> int:
        """Size of the sector embedding table."""
        return int(self.sector_ids.max()) + 1 if len(self.sector_ids) else 1

    def stock_index(self, stocks: Sequence[str | int] | None) -> np.ndarray | None:
        """Stock positions of symbols (or positions passed through); None stays None."""
        if stocks is None:
            return None
        lookup = {s: i for i, s in enumerate(self.symbols)}
        out = []
        for s in stocks:
            if isinstance(s, int | np.integer):
                out.append(int(s))
            elif s in lookup:
                out.append(lookup[s])
            else:
                raise KeyError(f"stock {s!r} is not in the inputs ({len(self.symbols)} symbols)")
        return np.asarray(out, dtype=np.int64)

    def loader(self, lookback: int, labels: np.ndarray | None = None, **kwargs) -> WindowLoader:
        """A :class:`WindowLoader` over these inputs (``kwargs`` go to the loader): window
        batches, or sequence batches with ``chunk_length=C``."""
        loader = WindowLoader(
            self.values,
            self.valid,
            lookback,
            labels,
            sector_ids=self.sector_ids,
            concat_inputs=self.concat,
            **kwargs,
        )
        assert loader.num_features == self.num_features
        return loader


def _relationship_arrays(relationships: Any, features: FeatureSet) -> tuple[np.ndarray, list[str]]:
    """``(values [T, N, K], names)`` from a relationship store, a FeatureSet or a tuple."""
    if isinstance(relationships, tuple):
        values, names = relationships
    else:
        values = relationships.values
        names = list(relationships.names)
        for attr, want in (("dates", features.dates), ("symbols", features.symbols)):
            have = getattr(relationships, attr, None)
            if have is not None and not np.array_equal(np.asarray(have), np.asarray(want)):
                raise ValueError(
                    f"relationship features have different {attr} than the feature set; "
                    "extract them from a Stage1 model fitted on the same panel"
                )
    values = np.asarray(values, dtype=np.float32)
    T, N = features.mask.shape
    if values.ndim != 3 or values.shape[:2] != (T, N) or values.shape[2] != len(names):
        raise ValueError(
            f"relationship features have shape {values.shape} with {len(names)} names, "
            f"expected ({T}, {N}, K) with K names"
        )
    clash = sorted(set(map(str, names)) & set(features.names))
    if clash:
        raise ValueError(f"relationship feature names clash with feature names: {clash[:5]}")
    return values, [str(n) for n in names]


def assemble_inputs(
    features: FeatureSet,
    relationships: Any = None,
    feature_set: str = "own",
    *,
    sectors: Sequence | np.ndarray | None = None,
) -> Stage3Inputs:
    """Pick the Stage3 input columns for ``feature_set`` (see the module docstring).

    Args:
        features: the feature set with groups ``own`` and, if present, ``index`` and ``calendar``.
        relationships: Stage1 relationship features for ``hybrid``: an object with
            ``values [T, N, K]`` and ``names`` (a relationship store or a FeatureSet), or a
            ``(values, names)`` tuple.
        feature_set: ``"own"``, ``"hybrid"`` or ``"rawconcat"``.
        sectors: sector label of every stock (strings or ints), for the sector embedding.
    """
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {FEATURE_SETS}, got {feature_set!r}")
    if "own" not in features.groups:
        raise ValueError(f"the feature set has no 'own' group; groups: {list(features.groups)}")
    T, N = features.mask.shape
    context = [g for g in ("alpha158", "index", "calendar", "regime") if features.groups.get(g)]
    groups = {g: list(features.groups[g]) for g in ("own", *context)}
    valid = features.mask.copy()
    if sectors is None:
        sector_ids = np.zeros(N, dtype=np.int64)
    else:
        _, sector_ids = np.unique(np.asarray(sectors).astype(str), return_inverse=True)
        if len(sector_ids) != N:
            raise ValueError(f"sectors has {len(sector_ids)} entries, expected {N} stocks")
    concat = None
    if feature_set == "rawconcat":
        own_names = groups["own"]
        concat = features.group("own")  # (T, N, F_own)
        all_own = [f"{s}:{n}" for s in features.symbols for n in own_names]
        groups = {"all_own": all_own, **{g: groups[g] for g in context}}
        values = features.group(*context) if context else np.zeros((T, N, 0), np.float32)
        names = all_own + [n for g in context for n in groups[g]]
    else:
        values = features.group("own", *context)  # (T, N, F_own + F_index + F_calendar)
        names = [n for g in ("own", *context) for n in groups[g]]
        if feature_set == "hybrid":
            if relationships is None:
                raise ValueError(
                    "feature_set='hybrid' needs relationship features: pass the Stage1 "
                    "relationship store (relcast.relationships.build_relationship_store)"
                )
            rel, rel_names = _relationship_arrays(relationships, features)
            valid &= np.isfinite(rel).all(axis=-1)
            values = np.concatenate([values, rel], axis=-1)  # (T, N, F_own... + K)
            names += rel_names
            groups["relationship"] = rel_names
    values = np.ascontiguousarray(values, dtype=np.float32)
    valid &= np.isfinite(values).all(axis=-1)
    if concat is not None:
        # zeros where a stock is masked, once here: every loader then shares this array
        concat = np.array(concat, dtype=np.float32)  # (T, N, F_own), our own copy
        np.nan_to_num(concat, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        concat[~valid] = 0.0
    return Stage3Inputs(
        feature_set=feature_set,
        dates=features.dates,
        symbols=features.symbols,
        values=values,
        valid=valid,
        names=names,
        groups=groups,
        sector_ids=sector_ids.astype(np.int64),
        concat=None if concat is None else np.ascontiguousarray(concat, dtype=np.float32),
    )


# ----------------------------------------------------------------------------- training


def _lightning_module_class():
    import lightning

    from relcast.models.metrics import daily_rank_ic
    from relcast.models.temporal.losses import pinball_loss, point_forecast

    class Stage3Module(lightning.LightningModule):
        """Loss, optimiser and the validation Rank IC around any registered Stage3 model."""

        def __init__(
            self,
            model: torch.nn.Module,
            quantiles: Sequence[float] | None,
            lr: float = 1e-3,
            weight_decay: float = 0.0,
        ) -> None:
            super().__init__()
            self.model = model
            self.quantiles = None if quantiles is None else tuple(quantiles)
            self.lr, self.weight_decay = lr, weight_decay
            self._val_rows: list[torch.Tensor] = []

        def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return self.model(batch)

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            # a sequence batch is scored at its origin steps only (pred [B, C, H, Q])
            origin = batch.get("origin")
            loss = pinball_loss(self.model(batch)["pred"], batch["y"], self.quantiles, origin)
            self.log(
                "train_loss", loss, on_step=False, on_epoch=True, batch_size=_samples(batch),
                sync_dist=True,
            )  # fmt: skip
            return loss

        def on_validation_epoch_start(self) -> None:
            self._val_rows = []

        def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
            pred = self.model(batch)["pred"]  # (B, H, Q) or (B, C, H, Q)
            origin = batch.get("origin")
            loss = pinball_loss(pred, batch["y"], self.quantiles, origin)
            # sync_dist: under DDP every rank must see the same val_loss, since early stopping
            # and the best checkpoint may watch it (one target stock)
            self.log(
                "val_loss", loss, on_step=False, on_epoch=True, batch_size=_samples(batch),
                sync_dist=True,
            )  # fmt: skip
            t, n, y = batch["t"], batch["n"], batch["y"]
            if origin is not None:  # the origin steps of the chunks, one row each
                pred, t, y = pred[origin], t[origin], y[origin]  # (M, H, Q), (M,), (M, H)
                n = n[:, None].expand_as(origin)[origin]  # (M,)
            point = point_forecast(pred, self.quantiles)[:, 0]  # (M,) horizon 1
            y1 = y[:, 0]
            cols = [t, n, point, y1]
            row = torch.stack([c.double() for c in cols], dim=1)  # (B, 4)
            self._val_rows.append(row.detach())

        def on_validation_epoch_end(self) -> None:
            rows = torch.cat(self._val_rows) if self._val_rows else torch.zeros(0, 4)
            rows = rows.to(self.device, torch.float64)
            if self.trainer.world_size > 1:
                # shards differ in size by at most one window: pad with NaN rows, gather, drop
                size = torch.tensor([len(rows)], device=self.device)
                longest = int(self.all_gather(size).max())
                pad = torch.full((longest - len(rows), 4), float("nan"), device=self.device)
                rows = self.all_gather(torch.cat([rows, pad])).reshape(-1, 4)
                rows = rows[torch.isfinite(rows[:, 0])]
            rows = rows.cpu().numpy()
            ic = float("nan")
            if len(rows):
                dates, t_pos = np.unique(rows[:, 0].astype(np.int64), return_inverse=True)
                n_pos = rows[:, 1].astype(np.int64)
                N = int(n_pos.max()) + 1
                pred = np.full((len(dates), N), np.nan)
                label = np.full((len(dates), N), np.nan)
                pred[t_pos, n_pos], label[t_pos, n_pos] = rows[:, 2], rows[:, 3]
                daily = daily_rank_ic(pred, label, np.isfinite(pred) & np.isfinite(label))
                if np.isfinite(daily).any():
                    ic = float(np.nanmean(daily))
            self.log("val_rank_ic", ic, sync_dist=False)

        def configure_optimizers(self):
            # a wrapper (the regime gate) may ask for its own learning rate per group
            groups = getattr(self.model, "param_groups", None)
            params = groups(self.lr, self.weight_decay) if groups else self.model.parameters()
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    return Stage3Module


def _samples(batch: dict[str, torch.Tensor]) -> int:
    """Scored samples in a batch: its origin steps (sequence) or its windows."""
    origin = batch.get("origin")
    return int(origin.sum()) if origin is not None else len(batch["y"])


def __getattr__(name: str):
    # Stage3Module lives behind a function so that importing this module stays cheap.
    if name == "Stage3Module":
        return _lightning_module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _epoch_timer_class():
    import lightning

    class EpochTimer(lightning.Callback):
        """Wall time of every training epoch (validation excluded)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer


@dataclass(eq=False)
class Stage3Result:
    """A trained Stage3 model and how its training went.

    Attributes:
        model: the registry model with the best-validation weights, in eval mode (inside a
            :class:`~relcast.models.regime.RegimeGatedModel` when trained with ``regime_gate``).
        history: one dict per epoch (``train_loss``, ``val_loss``, ``val_rank_ic``, ...).
        best_val_rank_ic: the best mean daily Rank IC (horizon 1) on the valid split.
        seconds_per_epoch: mean wall time of a training epoch (validation excluded).
        windows_per_second: scored training samples (window ends) per second, forward +
            backward, whether trained on windows or on chunks.
        num_train_windows: scored samples (window ends) per training epoch.
        lookback, quantiles, label_norm, feature_set: how it was trained.
        checkpoint: path of the best Lightning checkpoint ("" if none).
        chunk_length: the chunk length of sequence training, None if trained on windows.
    """

    model: torch.nn.Module
    history: list[dict[str, float]]
    best_val_rank_ic: float
    seconds_per_epoch: float
    windows_per_second: float
    num_train_windows: int
    lookback: int
    quantiles: tuple[float, ...] | None
    label_norm: str
    feature_set: str
    checkpoint: str = ""
    chunk_length: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def predict(self, inputs: Stage3Inputs, index: np.ndarray | None = None, **kwargs) -> dict:
        """:func:`predict_stage3` with this result's model."""
        return predict_stage3(self.model, inputs, index, **kwargs)


def fit_stage3(
    model_name: str,
    inputs: Stage3Inputs,
    labels: np.ndarray,
    split: Any,
    *,
    lookback: int,
    hparams: dict[str, Any] | None = None,
    quantiles: Sequence[float] | None = (0.1, 0.5, 0.9),
    max_epochs: int = 20,
    batch_size: int = 1024,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    patience: int = 5,
    seed: int = 0,
    out_dir: str | Path,
    stocks: Sequence[str | int] | None = None,
    label_norm: str = "cross_section",
    progress: bool = True,
    regime_gate: bool = False,
    index_symbols: Sequence[str] = (),
    accelerator: str = "cpu",
    devices: int | str = 1,
    strategy: str = "auto",
    chunk_length: int | None = CHUNK_LENGTH,
    **trainer_kwargs: Any,
) -> Stage3Result:
    """Train the Stage3 model ``model_name`` on the windows ending in ``split.train``.

    By default on sequence batches: chunks of ``chunk_length`` steps of each stock's span,
    scored at every window end after a burn-in of ``lookback - 1`` steps (see
    :mod:`relcast.training.loader`); each window end is scored once per epoch, as in
    windowed training, for a fraction of the cost.

    Args:
        model_name: a registered model (``"tft"``, ``"lstm"``, ``"gru"``, ``"tcn"``).
        inputs: from :func:`assemble_inputs`.
        labels: raw forward returns ``[T, N, H]`` (``relcast.features.forward_returns``).
        split: has ``train`` and ``valid`` date-index arrays (``chronological_split``).
        lookback: window length L.
        hparams: model hyperparameters beyond the data-given ones (``hidden_size``,
            ``num_layers``, ``dropout``, ``kernel_size``, ...).
        quantiles: predicted quantiles, or None for a point forecast trained with MSE.
        max_epochs, batch_size, lr, weight_decay, patience: the optimisation.
        seed: seeds the weights, dropout and the window shuffle: same seed, same model.
        out_dir: run folder for checkpoints and the CSV log.
        stocks: train (and validate) on these target stocks only; all if None. With one
            stock, early stopping and the checkpoint watch ``val_loss`` (no Rank IC exists).
        label_norm: ``"cross_section"`` (default), ``"cs_rank"`` (qlib's CSRankNorm) or
            ``"none"``, see the module docstring.
        progress: show the progress bar.
        regime_gate: wrap the model in a :class:`relcast.models.regime.RegimeGatedModel`
            that scales the index vs sector relationship columns by the regime of each
            step, with the scales learned along with the model. Needs ``inputs`` with the
            ``regime`` group and V1/V3 relationship columns.
        index_symbols: the market index symbols (their ``attn_``/``ctr_sim_`` columns are
            index columns for the gate).
        accelerator, devices, strategy: passed to Lightning (``strategy="ddp"`` shards the
            windows across processes).
        chunk_length: the chunk length C of sequence training (``batch_size`` then counts
            scored steps); None trains on one window per sample (kept for comparisons).
    """
    from relcast.models.temporal import create_model
    from relcast.training.common import load_best_state_dict, make_trainer, seed_everything

    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim == 2:
        labels = labels[:, :, None]
    if labels.shape[:2] != inputs.valid.shape:
        raise ValueError(
            f"labels have shape {labels.shape}, expected {inputs.valid.shape + ('H',)}"
        )
    if label_norm not in LABEL_NORMS:
        raise ValueError(f"label_norm must be one of {LABEL_NORMS}, got {label_norm!r}")
    # z-scores over every stock with valid inputs, also when training on one target stock
    if label_norm == "cross_section":
        target = normalize_labels_cross_section(labels, inputs.valid)
    elif label_norm == "cs_rank":  # qlib's CSRankNorm: ranks per date, in z units
        target = rank_normalize_labels_cross_section(labels, inputs.valid)
    else:
        target = labels
    target = np.asarray(target, dtype=np.float32)  # one copy, shared by both loaders
    stock_idx = inputs.stock_index(stocks)
    train = inputs.loader(
        lookback, target, index=split.train, stocks=stock_idx, batch_size=batch_size,
        shuffle=True, seed=seed, chunk_length=chunk_length,
    )  # fmt: skip
    valid = inputs.loader(
        lookback, target, index=split.valid, stocks=stock_idx, chunk_length=chunk_length,
        batch_size=eval_batch_size(
            max(batch_size, 4096), inputs.num_features, lookback, chunk_length
        ),
    )  # fmt: skip
    if train.num_windows == 0:
        raise ValueError(
            f"no training windows: lookback {lookback} with {len(split.train)} training dates "
            "and the mask leaves no complete window; use a shorter lookback or more data"
        )
    if valid.num_windows == 0:
        raise ValueError("no validation windows: the valid split is shorter than needed")

    seed_everything(seed)
    model = create_model(
        model_name,
        num_features=inputs.num_features,
        horizons=labels.shape[-1],
        quantiles=None if quantiles is None else tuple(quantiles),
        num_stocks=len(inputs.symbols),
        num_sectors=inputs.num_sectors,
        lookback=lookback,
        feature_names=tuple(inputs.names),
        **(hparams or {}),
    )
    if label_norm == "none":  # quantile heads start at unit scale; raw returns are smaller
        from relcast.models.temporal.losses import QuantileHead

        scale = float(np.nanstd(target[np.asarray(split.train)]))
        for head in model.modules():
            if isinstance(head, QuantileHead):
                head.init_interval(scale)
    if regime_gate:
        from relcast.models.regime import RegimeGatedModel

        model = RegimeGatedModel.wrap(model, inputs.names, index_symbols)
    module = _lightning_module_class()(model, quantiles, lr=lr, weight_decay=weight_decay)
    timer = _epoch_timer_class()()
    # a Rank IC needs >= 2 stocks per date; one target stock is judged by its loss instead
    single = stock_idx is not None and len(np.unique(stock_idx)) == 1
    trainer = make_trainer(
        out_dir,
        monitor="val_loss" if single else "val_rank_ic",
        mode="min" if single else "max",
        patience=patience,
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        progress=progress,
        **trainer_kwargs,
    )
    trainer.callbacks.append(timer)
    trainer.fit(module, train_dataloaders=train.dataloader(), val_dataloaders=valid.dataloader())

    best = load_best_state_dict(trainer, prefix="model.")
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    history = list(trainer.epoch_history)
    ics = [row["val_rank_ic"] for row in history if np.isfinite(row.get("val_rank_ic", np.nan))]
    seconds = float(np.mean(timer.seconds)) if timer.seconds else float("nan")
    return Stage3Result(
        model=model,
        history=history,
        best_val_rank_ic=max(ics) if ics else float("nan"),
        seconds_per_epoch=seconds,
        windows_per_second=train.num_windows / seconds if seconds > 0 else float("nan"),
        num_train_windows=train.num_windows,
        lookback=lookback,
        quantiles=None if quantiles is None else tuple(quantiles),
        label_norm=label_norm,
        feature_set=inputs.feature_set,
        checkpoint=str(trainer.checkpoint_callback.best_model_path or ""),
        chunk_length=train.chunk_length,
    )


@torch.no_grad()
def predict_stage3(
    model: torch.nn.Module | Stage3Result,
    inputs: Stage3Inputs,
    index: np.ndarray | None = None,
    lookback: int | None = None,
    *,
    stocks: Sequence[str | int] | None = None,
    batch_size: int = 4096,
    chunk_length: int | None = CHUNK_LENGTH,
) -> dict[str, np.ndarray]:
    """Forecast every complete window ending on ``index`` (all dates if None).

    On chunks (the default, one pass per chunk of each stock's span, as trained), or one
    window per forecast with ``chunk_length=None``. The chunks follow a tiling fixed by the
    data (:mod:`relcast.training.loader`), so a date predicted alone gets the same forecast
    as inside a span; alone it is one short pass of ``lookback`` to ``chunk_length`` steps
    per stock (a daily update).

    Returns:
        ``pred``: ``float32 [T, N, H, Q]``, NaN where no complete window ends;
        ``point``: ``float32 [T, N, H]``, the median (or the point forecast).
        In the label units the model was trained on (z-scores by default).
    """
    from relcast.models.temporal.losses import point_forecast

    if isinstance(model, Stage3Result):
        model = model.model
    config = model.config
    lookback = config.lookback if lookback is None else lookback
    # rank 0 of 1: a prediction covers every window, even in a process that trained with DDP
    batch_size = eval_batch_size(batch_size, inputs.num_features, lookback, chunk_length)
    loader = inputs.loader(
        lookback, index=index, stocks=inputs.stock_index(stocks), batch_size=batch_size,
        rank=0, world_size=1, chunk_length=chunk_length,
    )  # fmt: skip
    was_training = model.training
    model.eval()
    T, N = inputs.valid.shape
    pred = np.full((T, N, config.horizons, config.num_quantiles), np.nan, dtype=np.float32)
    for batch in loader:
        out = model(batch)["pred"]  # (B, H, Q) or (B, C, H, Q)
        t, n = batch["t"], batch["n"]
        if "origin" in batch:  # the forecasts at the chunks' origin steps
            origin = batch["origin"]
            out, t, n = out[origin], t[origin], n[:, None].expand_as(origin)[origin]
        pred[t.numpy(), n.numpy()] = out.float().numpy()
    model.train(was_training)
    point = point_forecast(torch.from_numpy(pred), config.quantiles).numpy()
    return {"pred": pred, "point": point}
