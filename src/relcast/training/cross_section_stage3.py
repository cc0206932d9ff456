"""Stage3 for the whole-date models (StockMixer, RSR, MASTER: :mod:`relcast.models.relational`).

The other Stage3 models read one stock's window (or chunk) at a time; these mix the stocks
of a date inside the model, so a batch is D whole dates: ``x [D, N, L, F]``, the window of
``lookback`` dates ending at each date for every stock, with ``mask [D, N]`` (the stock has a
complete window: no masked date in it, the same rule as :func:`~relcast.training.windows.
window_end_mask` gives the other models). Masked stocks take no part in the mixing (the
models exclude them) nor in the loss. A forecast for date t reads dates ``t - L + 1 .. t``
of every stock, never a later date.

Same inputs, labels and splits as :func:`relcast.training.stage3.fit_stage3` (which hands
these models over to :func:`fit_cross_section`): the same :class:`~relcast.training.
stage3_inputs.Stage3Inputs`, the same normalised target, training dates ``split.train``,
early stopping on the mean daily Rank IC (horizon 1) over ``split.valid``, the best
checkpoint restored. Scored cells: target stocks with a complete window and a finite label.
Loss: the pinball loss (squared error in point mode) on the scored cells plus the model's
``rank_weight`` times RSR's pairwise hinge on wrongly ordered pairs of the same date.
``batch_size`` counts scored samples as for the other models: a step holds
``round(batch_size / target stocks)`` dates (one date at 1,026 stocks and 1,024, as the
papers train). :func:`predict_cross_section` forecasts every (date, stock) with a complete
window, as :func:`~relcast.training.stage3.predict_stage3` does for the other models.
Not yet: DDP sharding of the dates (under ``torchrun`` every rank reads every date), the
regime gate, and ``rawconcat`` inputs (these models read every stock already); the last two
are refused with a message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from relcast.features.industry import NO_INDUSTRY
from relcast.training.specs import Stage3Spec, TrainerSpec
from relcast.training.windows import window_end_mask

EVAL_FLOATS = 2**25
"""Input floats per evaluation batch at most (128 MB)."""


def industry_ids(inputs: Any) -> np.ndarray:
    """``int [N]``: each stock's sector id, -1 where its label means no industry (empty,
    ``unknown``, ``n/a``; the funds of the NASDAQ file). Without labels every id counts."""
    ids = np.asarray(inputs.sector_ids, dtype=np.int64).copy()
    labels = getattr(inputs, "sector_labels", None)
    if labels is not None:
        none = np.array([str(s).strip().lower() in NO_INDUSTRY for s in labels], dtype=bool)
        ids[none[ids]] = -1
    return ids


class DateBatches(IterableDataset):
    """Batches of whole dates (see the module docstring), for ``DataLoader(batch_size=None)``.

    Args:
        inputs: a :class:`~relcast.training.stage3_inputs.Stage3Inputs` (a store-backed one is
            read from its stock-major map, one ``[N, L, F]`` block per date).
        lookback: window length L.
        dates: the date indices to forecast (a split).
        target: ``[T, N, H]`` labels the loss reads; None to predict (``y`` is then zeros).
        stocks: target stock positions (the ``scored`` cells); all if None.
        dates_per_batch: D.
        shuffle_seed: permute the dates every epoch with ``seed + epoch``; None keeps order.
    """

    def __init__(
        self,
        inputs: Any,
        lookback: int,
        dates: np.ndarray,
        target: np.ndarray | None = None,
        stocks: np.ndarray | None = None,
        dates_per_batch: int = 1,
        shuffle_seed: int | None = None,
    ) -> None:
        self.inputs, self.lookback, self.target = inputs, int(lookback), target
        self.mask = window_end_mask(inputs.valid, lookback)  # (T, N) complete windows
        T, N = self.mask.shape
        on_stocks = np.ones(N, dtype=bool)
        if stocks is not None:
            on_stocks[:] = False
            on_stocks[np.asarray(stocks, dtype=np.int64)] = True
        dates = np.asarray(dates, dtype=np.int64)
        scored = self.mask[dates] & on_stocks  # (len(dates), N)
        if target is not None:
            scored &= np.isfinite(np.asarray(target[dates])).all(axis=-1)
        keep = scored.any(axis=1)
        self.dates, self.scored = dates[keep], scored[keep]
        self.num_scored = int(self.scored.sum())
        self.dates_per_batch = max(1, int(dates_per_batch))
        self.shuffle_seed, self.epoch = shuffle_seed, 0
        self.sector_id = torch.as_tensor(industry_ids(inputs))
        # every stock's sector index as the window models read it (no industry: its own id)
        self.sector_code = torch.as_tensor(np.asarray(inputs.sector_ids, dtype=np.int64))
        self.stock_id = torch.arange(N)

    def __len__(self) -> int:
        return -(-len(self.dates) // self.dates_per_batch)

    def window(self, t: int) -> np.ndarray:
        """``float32 [N, L, F]``: every stock's window ending at date ``t``."""
        a = t - self.lookback + 1
        by_stock = getattr(self.inputs, "by_stock", None)
        if by_stock is not None:  # a store's stock-major map: one block per stock
            return np.asarray(by_stock[:, a : t + 1], dtype=np.float32)
        return np.asarray(self.inputs.values[a : t + 1], dtype=np.float32).transpose(1, 0, 2)

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch of the dates ``self.dates[rows]``."""
        ts = self.dates[rows]
        mask = self.mask[ts]  # (D, N)
        x = np.stack([self.window(int(t)) for t in ts])  # (D, N, L, F)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        x[~mask] = 0.0  # a masked stock's inputs are never read
        scored = self.scored[rows]
        if self.target is None:
            y = np.zeros(mask.shape + (1,), dtype=np.float32)
        else:
            y = np.array(self.target[ts], dtype=np.float32)  # (D, N, H)
            y[~scored] = np.nan
        return {
            "x": torch.from_numpy(x),
            "mask": torch.from_numpy(mask),
            "scored": torch.from_numpy(scored),
            "y": torch.from_numpy(y),
            "t": torch.from_numpy(ts),
            "sector_id": self.sector_id,
            "sector_code": self.sector_code,
            "stock_id": self.stock_id,
        }

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = np.arange(len(self.dates))
        if self.shuffle_seed is not None:
            order = np.random.default_rng(self.shuffle_seed + self.epoch).permutation(order)
            self.epoch += 1
        for a in range(0, len(order), self.dates_per_batch):
            yield self.batch(np.sort(order[a : a + self.dates_per_batch]))

    def dataloader(self) -> DataLoader:
        return DataLoader(self, batch_size=None)


def cross_section_loss(
    pred: torch.Tensor, batch: dict, quantiles, rank_weight: float = 0.0
) -> torch.Tensor:
    """Pinball (or squared) error of ``pred [D, N, H, Q]`` on the scored cells plus
    ``rank_weight`` x the pairwise hinge on each date's wrongly ordered pairs."""
    from relcast.models.temporal.losses import pinball_loss, point_forecast
    from relcast.training.ranking_losses import pairwise_rank_loss

    y, scored = batch["y"], batch["scored"]
    loss = pinball_loss(pred, y, quantiles, scored)
    if rank_weight > 0:
        valid = scored[..., None] & torch.isfinite(y)  # (D, N, H)
        point = point_forecast(pred, quantiles)  # (D, N, H)
        loss = loss + rank_weight * pairwise_rank_loss(point, y, valid, kind="hinge")
    return loss


def _module_class():
    import lightning

    from relcast.metrics import daily_rank_ic
    from relcast.models.temporal.losses import point_forecast

    class CrossSectionModule(lightning.LightningModule):
        """Loss, optimiser and validation Rank IC around a whole-date model."""

        def __init__(self, model, quantiles, lr: float, weight_decay: float) -> None:
            super().__init__()
            self.model, self.quantiles = model, quantiles
            self.lr, self.weight_decay = lr, weight_decay
            self.daily: list[np.ndarray] = []

        def loss(self, pred, batch) -> torch.Tensor:
            weight = float(getattr(self.model.config, "rank_weight", 0.0))
            return cross_section_loss(pred, batch, self.quantiles, weight)

        def training_step(self, batch, batch_idx):
            loss = self.loss(self.model(batch)["pred"], batch)
            samples = int(batch["scored"].sum())
            self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=samples)
            return loss

        def on_validation_epoch_start(self) -> None:
            self.daily = []

        def validation_step(self, batch, batch_idx) -> None:
            pred = self.model(batch)["pred"]
            loss = self.loss(pred, batch)
            samples = int(batch["scored"].sum())
            self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=samples)
            point = point_forecast(pred, self.quantiles)[..., 0].float().numpy()  # (D, N)
            y1 = batch["y"][..., 0].numpy()
            self.daily.append(daily_rank_ic(point, y1, batch["scored"].numpy()))

        def on_validation_epoch_end(self) -> None:
            daily = np.concatenate(self.daily) if self.daily else np.zeros(0)
            ic = float(np.nanmean(daily)) if np.isfinite(daily).any() else float("nan")
            self.log("val_rank_ic", ic)

        def configure_optimizers(self):
            return torch.optim.AdamW(
                self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay
            )

    return CrossSectionModule


def eval_dates_per_batch(inputs: Any, lookback: int) -> int:
    """Dates per evaluation batch: at most :data:`EVAL_FLOATS` input floats, and at most
    that many stock-pair scores of an attention across stocks at every step (MASTER's
    ``L x N x N`` per date: one date a batch at 1,026 stocks)."""
    N = inputs.valid.shape[1]
    per_date = max(N * lookback * inputs.num_features, lookback * N * N)
    return max(1, EVAL_FLOATS // max(1, per_date))


def fit_cross_section(
    model_name: str,
    inputs: Any,
    target: np.ndarray,
    split: Any,
    spec: Stage3Spec,
    trainer: TrainerSpec,
    stocks: np.ndarray | None = None,
) -> dict[str, Any]:
    """Train the whole-date model ``model_name`` on ``inputs`` and the normalised ``target``
    ``[T, N, H]`` (as ``fit_stage3`` builds it) with ``fit_stage3``'s ``spec`` and
    ``trainer``; ``stocks``: the target stock positions (all if None). Returns the fields of
    the :class:`~relcast.training.stage3.Stage3Result` that ``fit_stage3`` returns.
    ``spec.chunk_length`` does not apply (a batch is whole dates); ``spec.batch_size`` counts
    scored samples (dates per step = round(batch_size / target stocks), at least 1)."""
    from relcast.models.temporal.losses import QuantileHead
    from relcast.models.temporal.registry import create_model
    from relcast.training.common import fit_to_best, load_initial_weights, seed_everything
    from relcast.training.stage3_module import epoch_timer_class

    if spec.regime_gate:
        raise ValueError(f"{model_name} has no regime gate; set relationships.regime=false")
    if inputs.cross_width:
        raise ValueError(
            f"{model_name} reads every stock of a date already; the rawconcat feature set adds "
            "nothing to it: drop rawconcat from stage3.feature_sets or leave the model out of "
            "stage3.baseline_models"
        )
    T, N = inputs.valid.shape
    targets = N if stocks is None else len(np.unique(stocks))
    train = DateBatches(
        inputs, spec.lookback, split.train, target, stocks,
        dates_per_batch=round(spec.batch_size / max(1, targets)), shuffle_seed=spec.seed,
    )  # fmt: skip
    valid = DateBatches(
        inputs, spec.lookback, split.valid, target, stocks,
        dates_per_batch=eval_dates_per_batch(inputs, spec.lookback),
    )  # fmt: skip
    if train.num_scored == 0 or valid.num_scored == 0:
        raise ValueError(
            f"no {'training' if train.num_scored == 0 else 'validation'} date with a complete "
            f"window of lookback {spec.lookback}: use a shorter lookback or more data"
        )
    seed_everything(spec.seed)
    quantiles = None if spec.quantiles is None else tuple(spec.quantiles)
    model = create_model(
        model_name,
        num_features=inputs.num_features,
        horizons=target.shape[-1],
        quantiles=quantiles,
        num_stocks=N,
        num_sectors=inputs.num_sectors,
        lookback=spec.lookback,
        feature_names=tuple(inputs.names),
        **spec.hparams,
    )
    if spec.label_norm == "none":  # raw returns are far smaller than the heads' unit start
        scale = float(np.nanstd(np.asarray(target[np.asarray(split.train)])))
        for head in model.modules():
            if isinstance(head, QuantileHead):
                head.init_interval(scale)
    if spec.init is not None:  # a warm start (walk-forward): the previous block's weights
        load_initial_weights(model, spec.init)
    module = _module_class()(model, quantiles, spec.lr, spec.weight_decay)
    timer = epoch_timer_class()()  # the window models' epoch timer
    single = targets == 1
    loaders = train.dataloader(), valid.dataloader()
    done = fit_to_best(module, timer, loaders, spec, trainer.named(f"Stage3 {model_name}"), single)
    seconds = done.seconds_per_epoch
    return dict(
        model=model,
        history=done.history,
        best_val_rank_ic=done.best_val_rank_ic,
        seconds_per_epoch=seconds,
        windows_per_second=train.num_scored / seconds if seconds > 0 else float("nan"),
        num_train_windows=train.num_scored,
        lookback=spec.lookback,
        quantiles=quantiles,
        label_norm=spec.label_norm,
        feature_set=inputs.feature_set,
        checkpoint=done.checkpoint,
        chunk_length=None,
    )


@torch.no_grad()
def predict_cross_section(
    model: torch.nn.Module,
    inputs: Any,
    index: np.ndarray | None = None,
    *,
    stocks: np.ndarray | None = None,
    span: slice | None = None,
) -> dict[str, np.ndarray]:
    """Forecast every (date of ``index``, stock of ``stocks``) with a complete window.

    Returns ``pred [W, N, H, Q]`` and ``point [W, N, H]`` over the dates of ``span`` (all
    dates if None), NaN where no complete window ends; as
    :func:`~relcast.training.stage3.predict_stage3` returns them.
    """
    from relcast.models.temporal.losses import point_forecast

    config = model.config
    T = inputs.valid.shape[0]
    lo, hi, _ = (span or slice(0, T)).indices(T)
    index = np.arange(lo, hi) if index is None else np.asarray(index, dtype=np.int64)
    if len(index) and (index.min() < lo or index.max() >= hi):
        raise ValueError(f"predict_cross_section: index outside the span {lo}..{hi - 1}")
    index = index[index >= config.lookback - 1]
    batches = DateBatches(
        inputs, config.lookback, index, None, stocks,
        dates_per_batch=eval_dates_per_batch(inputs, config.lookback),
    )  # fmt: skip
    N = inputs.valid.shape[1]
    pred = np.full((hi - lo, N, config.horizons, config.num_quantiles), np.nan, dtype=np.float32)
    was_training = model.training
    model.eval()
    for batch in batches:
        out = model(batch)["pred"].float().numpy()  # (D, N, H, Q)
        scored = batch["scored"].numpy()
        rows = batch["t"].numpy() - lo
        block = pred[rows]  # (D, N, H, Q)
        block[scored] = out[scored]
        pred[rows] = block
    model.train(was_training)
    point = point_forecast(torch.from_numpy(pred), config.quantiles).numpy()
    return {"pred": pred, "point": point}
