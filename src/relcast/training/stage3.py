"""Stage3 training: any registered temporal model on own / hybrid / rawconcat inputs.

Read top to bottom:

1. :func:`~relcast.training.stage3_inputs.assemble_inputs` picks the input columns of the
   three feature sets the design compares:

   - ``own``: the stock's own indicators + index features + calendar (+ regime one-hots if
     the features have them),
   - ``hybrid``: ``own`` + the stock's Stage1 relationship features (the design's proposal),
   - ``rawconcat``: ``own`` + every stock's own indicators side by side at each date (the
     design's "original approach", e.g. 20 x 30 = 600 dims). The every-stock block is sent
     once per date of a batch and projected once per date
     (:mod:`relcast.models.temporal.cross_input`), never stored per target stock.

2. :class:`Stage3Module` (Lightning) holds the loss and the validation metric; the model is
   a plain ``nn.Module`` from the registry and never knows it is being trained.
   Loss: pinball loss over the quantiles (squared error in point mode) on labels that are
   **cross-sectionally normalised** per date and horizon (z-score over the stocks with a
   label, :func:`relcast.features.labels.normalize_labels_cross_section`), the field's default: it
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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from relcast.features.labels import (
    normalize_labels_cross_section,
    rank_normalize_labels_cross_section,
)
from relcast.models.temporal.registry import is_cross_section_model
from relcast.progress import PassProgress
from relcast.training.specs import CHUNK_LENGTH, Stage3Spec, TrainerSpec, chunk_steps
from relcast.training.stage3_inputs import Stage3Inputs, StockMajorInputs
from relcast.training.stage3_module import epoch_timer_class, lightning_module_class

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
        C = chunk_steps(chunk_length, lookback)
        steps = C / (C - lookback + 1)
    return max(1, min(int(want), int(EVAL_BATCH_FLOATS / (num_features * steps))))


LABEL_NORMS = ("cross_section", "cs_rank", "none")


@dataclass(eq=False)
class Stage3Result:
    """A trained Stage3 model and how its training went.

    Attributes:
        model: the registry model with the best-validation weights, in eval mode (inside a
            :class:`~relcast.models.regime_gate.RegimeGatedModel` when trained with
            ``regime_gate``).
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


TARGET_BLOCK_BYTES = 64 << 20
"""float64 bytes of labels normalised at a time when Stage3's inputs come from the store."""


def _target(labels: np.ndarray, valid: np.ndarray, label_norm: str, store: Any = None):
    """Stage3's training target ``float32 [T, N, H]`` (one copy, shared by both loaders).

    ``cross_section`` / ``cs_rank`` normalise each date's cross-section on its own, so with
    a ``store`` (inputs from the memory-mapped store) they run a block of dates at a time
    into a scratch file of the store's: the same values, without the float64 ``[T, N, H]``
    temporaries of one call over all dates, nor the target itself on the heap.
    """
    norm = {
        "cross_section": normalize_labels_cross_section,
        "cs_rank": rank_normalize_labels_cross_section,  # qlib's CSRankNorm, in z units
    }.get(label_norm)
    if norm is None:
        return np.asarray(labels, dtype=np.float32)
    if store is None:
        return np.asarray(norm(labels, valid), dtype=np.float32)
    T, N, H = labels.shape
    out = store.scratch("stage3_target", (T, N, H))  # (T, N, H)
    step = max(1, TARGET_BLOCK_BYTES // (N * H * 8 * 4))  # ~4 float64 temporaries a block
    for a in range(0, T, step):
        out[a : a + step] = norm(np.asarray(labels[a : a + step]), valid[a : a + step])
    return out


def fit_stage3(
    model_name: str,
    inputs: Stage3Inputs,
    labels: np.ndarray,
    split: Any,
    spec: Stage3Spec,
    trainer: TrainerSpec,
    *,
    stocks: Sequence[str | int] | None = None,
    index_symbols: Sequence[str] = (),
) -> Stage3Result:
    """Train the Stage3 model ``model_name`` on the windows ending in ``split.train``.

    By default on sequence batches: chunks of ``spec.chunk_length`` steps of each stock's
    span, scored at every window end after a burn-in of ``lookback - 1`` steps (see
    :mod:`relcast.training.loader`); each window end is scored once per epoch, as in
    windowed training, for a fraction of the cost.

    Args:
        model_name: a registered model (``"tft"``, ``"lstm"``, ``"gru"``, ``"tcn"``).
        inputs: from :func:`assemble_inputs`.
        labels: raw forward returns ``[T, N, H]`` (``relcast.features.labels.forward_returns``).
        split: has ``train`` and ``valid`` date-index arrays (``chronological_split``).
        spec: how to train (:class:`~relcast.training.specs.Stage3Spec`): ``lookback``,
            the model's ``hparams`` beyond the data-given sizes, ``quantiles`` (None: a
            point forecast trained with MSE), the optimisation (``max_epochs``,
            ``batch_size``, ``lr``, ``weight_decay``, ``patience``), ``label_norm``
            (``"cross_section"``, ``"cs_rank"`` (qlib's CSRankNorm) or ``"none"``, see the
            module docstring), ``seed`` (weights, dropout, shuffle: same seed, same model),
            ``chunk_length`` (C of sequence training, ``batch_size`` then counts scored
            steps; None trains on one window per sample) and ``regime_gate`` (wrap the
            model in a :class:`relcast.models.regime_gate.RegimeGatedModel` that scales the
            index vs sector relationship columns by the regime of each step; needs inputs
            with the ``regime`` group and V1/V3 relationship columns).
        trainer: Lightning's devices (``strategy="ddp"`` shards the windows across
            processes), the progress (a bar on a terminal, a line per epoch in a log, named by
            ``label``, default ``"Stage3 <model_name>"``) and ``out_dir`` (checkpoints and
            the CSV log).
        stocks: train (and validate) on these target stocks only; all if None. With one
            stock, early stopping and the checkpoint watch ``val_loss`` (no Rank IC exists).
        index_symbols: the market index symbols (their ``attn_``/``ctr_sim_`` columns are
            index columns for the gate).
    """
    from relcast.training.common import fit_to_best, load_initial_weights, seed_everything

    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim == 2:
        labels = labels[:, :, None]
    if labels.shape[:2] != inputs.valid.shape:
        raise ValueError(
            f"labels have shape {labels.shape}, expected {inputs.valid.shape + ('H',)}"
        )
    lookback, label_norm, chunk_length = spec.lookback, spec.label_norm, spec.chunk_length
    if label_norm not in LABEL_NORMS:
        raise ValueError(f"label_norm must be one of {LABEL_NORMS}, got {label_norm!r}")
    # z-scores over every stock with valid inputs, also when training on one target stock
    store = inputs.store if isinstance(inputs, StockMajorInputs) else None
    target = _target(labels, inputs.valid, label_norm, store)
    stock_idx = inputs.stock_index(stocks)
    if is_cross_section_model(model_name):  # whole-date models: their own data path
        from relcast.training.cross_section_stage3 import fit_cross_section

        fitted = fit_cross_section(model_name, inputs, target, split, spec, trainer, stock_idx)
        return Stage3Result(**fitted)
    train = inputs.loader(
        lookback, target, index=split.train, stocks=stock_idx, batch_size=spec.batch_size,
        shuffle=True, seed=spec.seed, chunk_length=chunk_length,
    )  # fmt: skip
    valid = inputs.loader(
        lookback, target, index=split.valid, stocks=stock_idx, chunk_length=chunk_length,
        batch_size=eval_batch_size(
            max(spec.batch_size, 4096), inputs.num_features, lookback, chunk_length
        ),
    )  # fmt: skip
    if train.num_windows == 0:
        raise ValueError(
            f"no training windows: lookback {lookback} with {len(split.train)} training dates "
            "and the mask leaves no complete window; use a shorter lookback or more data"
        )
    if valid.num_windows == 0:
        raise ValueError("no validation windows: the valid split is shorter than needed")

    seed_everything(spec.seed)
    quantiles = spec.quantiles
    model = build_model(model_name, inputs, labels.shape[-1], quantiles, lookback, spec.hparams)
    if label_norm == "none":  # quantile heads start at unit scale; raw returns are smaller
        from relcast.models.temporal.losses import QuantileHead

        scale = float(np.nanstd(target[np.asarray(split.train)]))
        for head in model.modules():
            if isinstance(head, QuantileHead):
                head.init_interval(scale)
    if spec.regime_gate:
        from relcast.models.regime_gate import RegimeGatedModel

        model = RegimeGatedModel.wrap(model, inputs.names, index_symbols)
    if spec.init is not None:  # a warm start (walk-forward): the previous block's weights
        load_initial_weights(model, spec.init)
    module = lightning_module_class()(model, quantiles, lr=spec.lr, weight_decay=spec.weight_decay)
    timer = epoch_timer_class()()
    # a Rank IC needs >= 2 stocks per date; one target stock is judged by its loss instead
    single = stock_idx is not None and len(np.unique(stock_idx)) == 1
    loaders = train.dataloader(), valid.dataloader()
    done = fit_to_best(module, timer, loaders, spec, trainer.named(f"Stage3 {model_name}"), single)
    seconds = done.seconds_per_epoch
    return Stage3Result(
        model=model,
        history=done.history,
        best_val_rank_ic=done.best_val_rank_ic,
        seconds_per_epoch=seconds,
        windows_per_second=train.num_windows / seconds if seconds > 0 else float("nan"),
        num_train_windows=train.num_windows,
        lookback=lookback,
        quantiles=None if quantiles is None else tuple(quantiles),
        label_norm=label_norm,
        feature_set=inputs.feature_set,
        checkpoint=done.checkpoint,
        chunk_length=train.chunk_length,
    )


def build_model(
    model_name: str,
    inputs: Stage3Inputs,
    horizons: int,
    quantiles: Sequence[float] | None,
    lookback: int,
    hparams: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """A fresh registry model for ``inputs``; on ``rawconcat`` inputs inside a
    :class:`~relcast.models.temporal.cross_input.CrossSectionInput` that projects each date's
    every-stock block to ``hidden_size`` features (once per date of a batch)."""
    from relcast.models.temporal.cross_input import CrossSectionInput, market_names
    from relcast.models.temporal.registry import create_model

    hparams = dict(hparams or {})
    width = int(hparams.get("hidden_size", 64)) if inputs.cross_width else 0
    names = tuple(market_names(width)) + tuple(inputs.names)
    model = create_model(
        model_name,
        num_features=width + inputs.num_features,
        horizons=horizons,
        quantiles=None if quantiles is None else tuple(quantiles),
        num_stocks=len(inputs.symbols),
        num_sectors=inputs.num_sectors,
        lookback=lookback,
        feature_names=names,
        **hparams,
    )
    if width:
        model = CrossSectionInput(model, inputs.cross_width, width)
    return model


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
    span: slice | None = None,
) -> dict[str, np.ndarray]:
    """Forecast every complete window ending on ``index`` (all dates if None).

    ``span``: return only the dates ``span.start .. span.stop - 1`` (``[W, N, ...]``, which
    must hold every date of ``index``), without a ``[T, N, H, Q]`` array.

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
    if getattr(model, "cross_section", False):  # a whole-date model reads every stock at once
        from relcast.training.cross_section_stage3 import predict_cross_section

        stock_idx = inputs.stock_index(stocks)
        return predict_cross_section(model, inputs, index, stocks=stock_idx, span=span)
    config = model.config
    lookback = config.lookback if lookback is None else lookback
    # rank 0 of 1: a prediction covers every window, even in a process that trained with DDP
    batch_size = eval_batch_size(batch_size, inputs.num_features, lookback, chunk_length)
    lo, hi, _ = (span or slice(0, inputs.valid.shape[0])).indices(inputs.valid.shape[0])
    if span is not None and index is None:
        index = np.arange(lo, hi)
    elif span is not None and len(index) and (np.min(index) < lo or np.max(index) >= hi):
        raise ValueError(f"predict_stage3: index outside the span {lo}..{hi - 1}")
    loader = inputs.loader(
        lookback, index=index, stocks=inputs.stock_index(stocks), batch_size=batch_size,
        rank=0, world_size=1, chunk_length=chunk_length,
    )  # fmt: skip
    was_training = model.training
    model.eval()
    T, N = inputs.valid.shape
    pred = np.full((hi - lo, N, config.horizons, config.num_quantiles), np.nan, dtype=np.float32)
    progress = PassProgress("Stage3 predict", len(loader), unit="batches")  # logs only
    for done, batch in enumerate(loader, start=1):
        out = model(batch)["pred"]  # (B, H, Q) or (B, C, H, Q)
        t, n = batch["t"], batch["n"]
        if "origin" in batch:  # the forecasts at the chunks' origin steps
            origin = batch["origin"]
            out, t, n = out[origin], t[origin], n[:, None].expand_as(origin)[origin]
        pred[t.numpy() - lo, n.numpy()] = out.float().numpy()
        progress.update(done)
    progress.finish()
    model.train(was_training)
    point = point_forecast(torch.from_numpy(pred), config.quantiles).numpy()
    return {"pred": pred, "point": point}
