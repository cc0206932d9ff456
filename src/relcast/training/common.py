"""Lightning plumbing shared by Stage1 and Stage3: one trainer factory, seeding, history.

The models stay plain ``nn.Module``; a thin ``LightningModule`` per stage holds the loss and
the optimiser; :func:`make_trainer` builds the ``Trainer`` that owns the loop, devices,
early stopping, the best checkpoint and the CSV log. Lightning is imported inside the
functions because importing it costs seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices, and DDP workers) for a reproducible run."""
    import lightning

    lightning.seed_everything(seed, workers=True, verbose=False)


def _history_callback_class():
    import lightning

    class EpochHistory(lightning.Callback):
        """Collects the epoch-level logged metrics (train and validation) as plain floats."""

        def __init__(self) -> None:
            self.history: list[dict[str, float]] = []

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            # Validation has already run inside this epoch, so both kinds of metric are here.
            row = {"epoch": float(trainer.current_epoch)}
            for key, value in trainer.callback_metrics.items():
                if key.endswith("_step"):
                    continue
                row[key.removesuffix("_epoch")] = float(value)
            self.history.append(row)

    return EpochHistory


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (device summary, tips) out of users' terminals."""
    import logging
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")


def make_trainer(
    trainer: Any,
    *,
    monitor: str = "val_rank_ic",
    mode: str = "max",
    patience: int = 5,
    max_epochs: int = 30,
    log_every_n_steps: int = 10,
    validate_every: int = 1,
    callbacks: list | None = None,
):
    """A ``lightning.Trainer`` with early stopping, a best checkpoint and a CSV log.

    Everything is written under ``trainer.out_dir``: ``checkpoints/best-*.ckpt`` and
    ``logs/version_*/metrics.csv``. The returned trainer has an ``epoch_history`` attribute
    (list of per-epoch metric dicts) and its ``checkpoint_callback.best_model_path`` names the
    best checkpoint after ``fit``. The checkpoint is a pickle: the pipeline deletes it
    (``RunFolder.drop_checkpoints``) as soon as the weights are saved as safetensors.

    Args:
        trainer: devices, strategy, precision, progress, ``label`` and ``out_dir`` (a run
            folder, never the repository): :class:`~relcast.training.specs.TrainerSpec`.
            Progress is Lightning's bar on a terminal and one line per epoch, named by
            ``label``, when the output is a file or a pipe (:mod:`relcast.progress`).
        monitor: the logged validation metric that early stopping and checkpointing watch.
        mode: ``"max"`` for IC-like metrics, ``"min"`` for losses.
        patience: epochs without improvement before stopping.
        max_epochs: hard limit on epochs.
        validate_every: epochs between validation passes.
        callbacks: extra Lightning callbacks, run after the built-in ones.
    """
    import lightning
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from relcast.progress import progress_style
    from relcast.training.progress_log import epoch_log_callback

    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    quiet_lightning()
    if trainer.out_dir is None:
        raise ValueError("make_trainer: the TrainerSpec has no out_dir (use .logging_to(dir))")
    out_dir = Path(trainer.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history = _history_callback_class()()
    checkpoint = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="best-{epoch}",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
    )
    # check_finite=False: an undefined IC early in training must not abort the run.
    stopping = EarlyStopping(monitor=monitor, mode=mode, patience=patience, check_finite=False)
    style = progress_style() if trainer.progress else None
    lines = [epoch_log_callback(trainer.label, monitor, mode)] if style == "log" else []
    arguments = dict(
        default_root_dir=str(out_dir),
        max_epochs=max_epochs,
        callbacks=[stopping, checkpoint, history, *lines, *trainer.callbacks, *(callbacks or [])],
        logger=CSVLogger(save_dir=str(out_dir), name="logs"),
        enable_progress_bar=style == "bar",
        enable_model_summary=False,
        gradient_clip_val=1.0,
        log_every_n_steps=log_every_n_steps,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=validate_every,
        **trainer.lightning_kwargs(),
    )
    fit = lightning.Trainer(**{**arguments, **trainer.options})
    fit.epoch_history = history.history
    return fit


@dataclass(frozen=True)
class Trained:
    """How a fit went: the epochs' metrics, the best validation Rank IC, the mean seconds of
    a training epoch and the best checkpoint's path ("" if none)."""

    history: list[dict[str, float]]
    best_val_rank_ic: float
    seconds_per_epoch: float
    checkpoint: str


def fit_to_best(module, timer, loaders: tuple, spec: Any, trainer: Any, single: bool) -> Trained:
    """Train the Lightning ``module`` on ``loaders`` (train, valid) with early stopping on the
    validation Rank IC (on the loss for a ``single`` target stock), then load the best
    checkpoint's weights into ``module.model`` (eval mode). ``timer`` (a callback with a
    ``seconds`` list) times the training epochs; ``spec`` gives ``patience`` and
    ``max_epochs``."""
    import numpy as np

    fit = make_trainer(
        trainer,
        monitor="val_loss" if single else "val_rank_ic",
        mode="min" if single else "max",
        patience=spec.patience,
        max_epochs=spec.max_epochs,
    )
    fit.callbacks.append(timer)
    train, valid = loaders
    fit.fit(module, train_dataloaders=train, val_dataloaders=valid)
    best = load_best_state_dict(fit, prefix="model.")
    if best is not None:
        module.model.load_state_dict(best)
    module.model.eval()
    history = list(fit.epoch_history)
    ics = [r["val_rank_ic"] for r in history if np.isfinite(r.get("val_rank_ic", np.nan))]
    return Trained(
        history=history,
        best_val_rank_ic=max(ics) if ics else float("nan"),
        seconds_per_epoch=float(np.mean(timer.seconds)) if timer.seconds else float("nan"),
        checkpoint=str(fit.checkpoint_callback.best_model_path or ""),
    )


def load_initial_weights(module, path: str | Path) -> None:
    """Start ``module`` from the weights saved at ``path`` (safetensors; a warm start):
    every parameter must be there with its shape, or the error names the file."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"cannot warm-start from {path}: its weights do not fit this model ({exc}); "
            "the universe or the inputs changed since it was trained"
        ) from None


def load_best_state_dict(trainer, prefix: str = "model.") -> dict | None:
    """The best checkpoint's weights of the submodule named by ``prefix`` (None if none saved).

    The checkpoint is one this run just wrote, so unpickling it is safe.
    """
    import torch

    path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not path:
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def release_pages_callback(store: Any, every_n_batches: int = 1) -> Any:
    """A Lightning callback that calls ``store.release()`` every few training batches.

    Pages a batch reads through the memory map stay in the process's RSS until the kernel
    needs the memory; releasing them keeps RSS at what ``every_n_batches`` batches touch.
    """
    import lightning

    class ReleaseMappedPages(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if (batch_idx + 1) % every_n_batches == 0:
                store.release()

        def on_train_start(self, trainer, pl_module) -> None:
            store.release()  # what building the loaders read (labels, mask)

        def on_validation_end(self, trainer, pl_module) -> None:
            store.release()

    return ReleaseMappedPages()
