"""The Lightning side of Stage3: :class:`Stage3Module` (loss, optimiser, validation Rank IC
around any registered model) and an epoch timer. Both are built on first use so that importing
:mod:`relcast.training.stage3` does not import Lightning."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch


def lightning_module_class():
    """The Lightning module class that trains a Stage3 model (built on first call, so that
    importing this module does not import Lightning)."""
    import lightning

    from relcast.metrics import daily_rank_ic
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
            # float32 keeps t and n exact below 2^24 and the forecasts as they are (float32)
            row = torch.stack([c.float() for c in (t, n, point, y1)], dim=1)  # (B, 4)
            self._val_rows.append(row.detach())

        def on_validation_epoch_end(self) -> None:
            rows = torch.cat(self._val_rows) if self._val_rows else torch.zeros(0, 4)
            self._val_rows = []  # (the rows are held once, not twice)
            rows = rows.to(self.device)
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
                # a dense [dates of the span, N] grid: a date without windows is all NaN,
                # whose Rank IC is NaN and left out of the mean
                t_pos = rows[:, 0].astype(np.int64)
                t_pos -= t_pos.min()
                n_pos = rows[:, 1].astype(np.int64)
                pred = np.full((int(t_pos.max()) + 1, int(n_pos.max()) + 1), np.nan)
                label = np.full_like(pred, np.nan)
                pred[t_pos, n_pos], label[t_pos, n_pos] = rows[:, 2], rows[:, 3]
                del rows, t_pos, n_pos
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
        return lightning_module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def epoch_timer_class():
    """The Lightning callback class that times each training epoch (built on first call)."""
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
