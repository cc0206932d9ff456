"""Training and inference for Stage1 (the cross-sectional Transformer).

One sample is one date: all N stocks' features ``x (N, F)``, their mask ``(N,)`` and their
forward-return labels ``y (N, H)``; a batch is a few dates. :class:`Stage1Module` holds the
losses and the optimiser, the Lightning ``Trainer`` from :func:`relcast.training.common.
make_trainer` owns the loop, devices (CPU/GPU/DDP), early stopping on the validation Rank IC,
the best checkpoint and the CSV log.

Losses (``stage1.loss``: ic, mse, listnet, pairwise, pairwise_hinge) are pure functions in
:mod:`relcast.training.ranking_losses`.
Why IC by default: the MSE depends on the prediction's scale, which starts near 0 (the
0.02-std output layers), so it first has to grow the whole output path before the loss moves;
on the planted lead-lag of ``synthetic_market`` (20 stocks, 600 days, strength 0.8, 3 seeds,
patience 10) it sat on that plateau for 10-20 epochs and early stopping ended 2 of 3 runs
before it learned anything (test Rank IC ~0), while the scale-free IC loss learned 3 of 3
(test Rank IC 0.18-0.20). Given more epochs MSE gets there too (0.18 after 30 epochs).
Horizons: the pipeline trains Stage1 on the next-bar label only (``stage1.horizons=1``). With
5 horizons the IC loss averaged over labels that overlap from one date to the next (a 5-day
return shares 4 days with the next date's), and Stage1 memorised them: on synthetic_market
(30 stocks, 1,500 days, lead-lag 0.35) train rank IC 0.26, test -0.01, against 0.015-0.054
on the test span with horizon 1 only (2 seeds, 15 epochs).
Multi-task (``config.multitask``) adds
- a correlation loss: cosine similarity of two stocks' ``relationship`` vectors should match
  the realised correlation of their daily returns over the next ``corr_window`` dates (taken
  from the horizon-1 labels of dates inside the same span, so no label crosses the span);
- a sector cross-entropy from a head on the ``relationship`` vectors (with the sector
  embedding on, this mostly makes the bottleneck carry sector information).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from relcast.features.featureset import FeatureSet
from relcast.models.cross_sectional import CrossSectionalTransformer, Stage1Config
from relcast.training.cross_section_data import CrossSectionDataset, DateBatches
from relcast.training.ranking_losses import LABEL_NORMS, LOSSES, return_loss
from relcast.training.specs import Stage1Spec, TrainerSpec
from relcast.training.torch_metrics import ic_torch, rank_ic_torch


def _define_stage1_module() -> type:
    # Lightning costs seconds to import, so the class is built on first use (see __getattr__
    # at the end of this file); its name and module are set so that pickling (ddp_spawn,
    # checkpoints) finds it as relcast.training.stage1.Stage1Module.
    import lightning

    class Stage1Module(lightning.LightningModule):
        """Loss, optimiser and logging around a :class:`CrossSectionalTransformer`.

        Logs ``train_loss``, ``val_loss``, ``val_ic`` and ``val_rank_ic`` (mean daily Rank IC of
        horizon 1 over the validation dates); multitask runs also log the component losses.

        Args:
            config: model config (or its dict, as stored in checkpoints).
            sector_ids: ``int [num_stocks]`` sector per stock, or None.
            loss: ``"ic"`` (default) or ``"mse"`` (see the module docstring).
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
        """

        def __init__(
            self,
            config: Stage1Config | dict,
            sector_ids: list[int] | np.ndarray | None = None,
            loss: str = "ic",
            lr: float = 1e-3,
            weight_decay: float = 1e-4,
            label_norm: str = "cross_section",
            rank_mse_weight: float = 0.0,
        ) -> None:
            super().__init__()
            if loss not in LOSSES:
                raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
            if label_norm not in LABEL_NORMS:
                raise ValueError(f"label_norm must be one of {LABEL_NORMS}, got {label_norm!r}")
            config = Stage1Config(**config) if isinstance(config, dict) else config
            sector_list = None if sector_ids is None else [int(s) for s in sector_ids]
            # Lightning compares the hparams with __init__'s locals: keep them plain values.
            sector_ids = sector_list
            self.save_hyperparameters(
                {
                    "config": config.to_dict(),
                    "sector_ids": sector_list,
                    "loss": loss,
                    "lr": lr,
                    "weight_decay": weight_decay,
                    "label_norm": label_norm,
                    "rank_mse_weight": rank_mse_weight,
                }
            )
            sectors = None if sector_list is None else torch.tensor(sector_list)
            self.model = CrossSectionalTransformer(config, sector_ids=sectors)
            self.config = config
            self.loss_name = loss
            self.label_norm = label_norm
            self.rank_mse_weight = rank_mse_weight
            self.has_sectors = sector_list is not None and config.num_sectors > 0

        def forward(self, batch: dict[str, torch.Tensor], need_weights: bool = False) -> dict:
            """Model outputs for a batch of dates (of random cross-sections: ``stock_ids``)."""
            return self.model(
                batch["x"], batch["mask"], stock_ids=batch.get("stock_ids"),
                need_weights=need_weights,
            )  # fmt: skip

        def _losses(self, batch: dict[str, torch.Tensor], out: dict) -> dict[str, torch.Tensor]:
            pred, y = out["pred"], batch["y"]  # (B, N, H) each
            valid = torch.isfinite(y) & batch["mask"][..., None]  # (B, N, H)
            zero = pred.sum() * 0.0  # keeps the graph when a term has nothing to score
            ret = return_loss(pred, y, valid, self.loss_name, self.label_norm, self.rank_mse_weight)
            losses = {"return": ret}
            total = ret
            if self.config.multitask:
                if "corr" in batch:
                    rel = F.normalize(out["relationship"], dim=-1)  # (B, N, r)
                    cos = rel @ rel.transpose(1, 2)  # (B, N, N)
                    ok = torch.isfinite(batch["corr"])
                    corr = ((cos - torch.nan_to_num(batch["corr"])) ** 2)[ok]
                    losses["corr"] = corr.mean() if corr.numel() else zero
                    total = total + self.config.corr_weight * losses["corr"]
                if "sector_logits" in out and self.has_sectors:
                    m = batch["mask"]  # (B, N)
                    ids = batch.get("stock_ids")  # (B, K) when a cross-section was drawn
                    all_ids = self.model.sector_ids
                    sectors = all_ids.expand_as(m) if ids is None else all_ids[ids]
                    losses["sector"] = F.cross_entropy(out["sector_logits"][m], sectors[m])
                    total = total + self.config.sector_weight * losses["sector"]
            losses["total"] = total
            return losses

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            losses = self._losses(batch, self(batch))
            B = batch["x"].shape[0]
            # sync_dist: epoch means over every rank's dates (a collective at epoch end only)
            self.log(
                "train_loss", losses["total"], on_step=False, on_epoch=True, batch_size=B,
                sync_dist=True,
            )  # fmt: skip
            for name in ("corr", "sector"):
                if name in losses:
                    self.log(
                        f"train_{name}_loss", losses[name], on_epoch=True, batch_size=B,
                        sync_dist=True,
                    )  # fmt: skip
            return losses["total"]

        def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
            out = self(batch)
            losses = self._losses(batch, out)
            B = batch["x"].shape[0]
            self.log("val_loss", losses["total"], on_epoch=True, batch_size=B, sync_dist=True)
            pred1, y1, m = out["pred"][..., 0], batch["y"][..., 0], batch["mask"]
            # Mean over dates: a batch's mean weighted by its date count, across steps and ranks.
            # An undefined IC (constant prediction) counts as 0, so it cannot look good.
            rank_ic = torch.nan_to_num(rank_ic_torch(pred1, y1, m), nan=0.0)
            ic = torch.nan_to_num(ic_torch(pred1.detach(), y1, m), nan=0.0)
            self.log("val_rank_ic", rank_ic.mean(), on_epoch=True, batch_size=B, sync_dist=True)
            self.log("val_ic", ic.mean(), on_epoch=True, batch_size=B, sync_dist=True)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(
                self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
            )

    Stage1Module.__module__ = __name__
    Stage1Module.__qualname__ = "Stage1Module"
    return Stage1Module


def _stage1_module_class() -> type:
    """``Stage1Module``, defined once per process."""
    if "Stage1Module" not in globals():
        globals()["Stage1Module"] = _define_stage1_module()
    return globals()["Stage1Module"]


@dataclass
class Stage1Result:
    """What :func:`fit_stage1` returns.

    Attributes:
        model: the trained model with the best checkpoint's weights, in eval mode, on CPU.
        history: one dict of logged metrics per epoch (``train_loss``, ``val_rank_ic``, ...).
        best_val_rank_ic: the best validation Rank IC (horizon 1) seen.
        train_seconds: wall time of ``Trainer.fit``.
        checkpoint_path: the best checkpoint file.
        config: the model config used.
    """

    model: CrossSectionalTransformer
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_rank_ic: float = float("nan")
    train_seconds: float = 0.0
    checkpoint_path: str = ""
    config: Stage1Config | None = None


def encode_sectors(sector_ids: Any, num_stocks: int) -> tuple[np.ndarray, int]:
    """``int [N]`` sector ids and their count from ints or labels (e.g. ``panel.sectors``)."""
    arr = np.asarray(sector_ids)
    if arr.shape != (num_stocks,):
        raise ValueError(
            f"sector_ids must have one entry per stock ({num_stocks}), got {arr.shape}"
        )
    if arr.dtype.kind in "iu":
        if (arr < 0).any():
            raise ValueError("integer sector_ids must be >= 0; pass labels to have them encoded")
        return arr.astype(np.int64), int(arr.max()) + 1
    _, codes = np.unique(arr.astype(str), return_inverse=True)
    return codes.astype(np.int64), int(codes.max()) + 1


def _check_inputs(features: FeatureSet, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float32)
    T, N, _ = features.values.shape
    if labels.ndim == 2:
        labels = labels[..., None]
    if labels.ndim != 3 or labels.shape[:2] != (T, N):
        raise ValueError(
            f"labels must be [T, N, H] = [{T}, {N}, H] like the features, got {labels.shape}; "
            "build them with relcast.features.labels.forward_returns(panel, horizons)"
        )
    return labels


def fit_stage1(
    features: FeatureSet,
    labels: np.ndarray,
    split: Any,
    config: Stage1Config | None,
    spec: Stage1Spec,
    trainer: TrainerSpec,
    *,
    sector_ids: Any = None,
    target: np.ndarray | None = None,
) -> Stage1Result:
    """Train Stage1 on the training dates, early-stopping on the validation Rank IC.

    Args:
        features: the feature set; all its columns are Stage1 inputs.
        labels: ``[T, N, H]`` forward returns (NaN where undefined).
        split: an object with ``train`` and ``valid`` date-index arrays (an out-of-fold
            model gets a split whose ``train`` holds its fold's fitting dates).
        config: model config (e.g. ``Stage1Config.from_settings(load_config(preset).stage1,
            ...)``); None: :class:`Stage1Config`'s defaults sized from the data.
        spec: how to train (:class:`~relcast.training.specs.Stage1Spec`): ``loss``
            (``"ic"``, ``"mse"``, ``"listnet"``, ``"pairwise"``, see the module docstring),
            ``label_norm`` (``"cross_section"`` or ``"cs_rank"``), ``rank_mse_weight``
            (the MSE added to the ``listnet``/``pairwise`` loss), ``max_epochs``,
            ``batch_dates``, ``lr``, ``weight_decay``, ``patience``, ``seed`` and
            ``max_stocks`` (each training date attends over a random subset of at most that
            many of its traded target stocks, drawn anew every epoch from ``seed``; validation
            reads every stock; None, or at least the number of target stocks, is full
            attention: :mod:`relcast.training.cross_section_data`).
        trainer: Lightning's devices (``strategy="ddp"`` works unchanged), the progress (a
            bar on a terminal, a line per epoch in a log, named by ``label``, default
            ``"Stage1"``) and ``out_dir`` (checkpoints and the CSV log).
        sector_ids: per-stock sector (ints or labels such as ``panel.sectors``), or None.
        target: ``bool [N]``, symbols that count in losses and metrics, e.g.
            ``~panel.is_index`` (default all).
    """
    from relcast.training.common import (
        load_best_state_dict,
        load_initial_weights,
        make_trainer,
        seed_everything,
    )

    labels = _check_inputs(features, labels)
    T, N, F_ = features.values.shape
    H = labels.shape[2]
    sectors, num_sectors = (None, 0) if sector_ids is None else encode_sectors(sector_ids, N)
    if config is None:
        config = Stage1Config(num_features=F_, num_stocks=N, num_sectors=num_sectors, horizons=H)
    if (config.num_features, config.num_stocks, config.horizons) != (F_, N, H):
        raise ValueError(
            f"config expects (num_features, num_stocks, horizons) = "
            f"{(config.num_features, config.num_stocks, config.horizons)} but the data has "
            f"{(F_, N, H)}; build the config with Stage1Config.from_settings(...) from the data"
        )
    if sectors is not None and config.num_sectors < num_sectors:
        raise ValueError(f"config.num_sectors={config.num_sectors} < {num_sectors} sectors given")

    train_index = np.asarray(split.train)
    corr_window = config.corr_window if config.multitask else 0
    common = dict(target=target, corr_window=corr_window)
    train_set = CrossSectionDataset(features.values, features.mask, labels, train_index, **common)
    valid_set = CrossSectionDataset(
        features.values, features.mask, labels, np.asarray(split.valid), **common
    )
    if len(train_set) == 0 or len(valid_set) == 0:
        raise ValueError(
            f"Stage1 needs labelled dates in both spans, got {len(train_set)} train and "
            f"{len(valid_set)} valid dates with >= 2 labelled stocks; check the split and labels"
        )

    seed_everything(spec.seed)
    module = _stage1_module_class()(
        config,
        sector_ids=sectors,
        loss=spec.loss,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        label_norm=spec.label_norm,
        rank_mse_weight=spec.rank_mse_weight,
    )
    if spec.init is not None:  # a warm start (walk-forward): the previous block's weights
        load_initial_weights(module.model, spec.init)
    shuffle_rng = torch.Generator()
    shuffle_rng.set_state(torch.get_rng_state())  # seeded above; immune to later RNG use
    batch_dates = spec.batch_dates
    fit = make_trainer(
        trainer.named("Stage1"),
        monitor="val_rank_ic",
        mode="max",
        patience=spec.patience,
        max_epochs=spec.max_epochs,
        log_every_n_steps=max(1, min(10, len(train_set) // batch_dates)),
        validate_every=spec.validate_every,
    )
    # batches of dates sharded by rank under DDP: each date once per epoch, equal step counts
    train_loader = DataLoader(
        DateBatches(
            train_set, batch_dates, shuffle=True, seed=spec.seed, generator=shuffle_rng,
            max_stocks=spec.max_stocks,
        ),
        batch_size=None,
    )  # fmt: skip
    valid_loader = DataLoader(DateBatches(valid_set, batch_dates), batch_size=None)
    start = time.perf_counter()
    fit.fit(module, train_loader, valid_loader)
    seconds = time.perf_counter() - start

    best = load_best_state_dict(fit, prefix="model.")
    if best is not None:
        module.model.load_state_dict(best)
    score = fit.checkpoint_callback.best_model_score
    return Stage1Result(
        model=module.model.cpu().eval(),
        history=list(fit.epoch_history),
        best_val_rank_ic=float(score) if score is not None else float("nan"),
        train_seconds=seconds,
        checkpoint_path=fit.checkpoint_callback.best_model_path,
        config=config,
    )


def __getattr__(name: str) -> Any:
    if name == "Stage1Module":
        return _stage1_module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
