"""One line per epoch of a Lightning training, for logs (see :mod:`relcast.progress`).

:func:`relcast.training.common.make_trainer` adds :func:`epoch_log_callback` instead of the
progress bar when the output is not a terminal::

    [relcast] Stage1: up to 30 epochs of 14 batches
    [relcast] Stage1 epoch 1/30: val_rank_ic 0.0123 (best 0.0123), train_loss -0.0081,
    95s/epoch, <= 45m55s left
    [relcast] Stage1 epoch 2/30: val_rank_ic 0.0098 (best 0.0123), ...

(one line per epoch in the log; wrapped here).

"<= ... left" is the time the remaining epochs up to ``max_epochs`` take at the mean epoch time
so far: an upper bound, since early stopping may end the training sooner.
"""

from __future__ import annotations

import time
from typing import Any

from relcast.progress import format_duration, log_line


def _define_epoch_log() -> type:
    import lightning

    class EpochLog(lightning.Callback):
        """Prints one line per training epoch (rank 0 only), see the module docstring.

        Args:
            label: the training's name in the lines (``"Stage1"``, ``"Stage3 tft"``).
            monitor: the validation metric shown first (and its best so far).
            mode: ``"max"`` or ``"min"``: which value of ``monitor`` is best.
        """

        def __init__(self, label: str, monitor: str, mode: str = "max") -> None:
            self.label, self.monitor, self.mode = label, monitor, mode
            self.best: float | None = None
            self.seconds: list[float] = []
            self.epoch_start = 0.0
            self.validated = False

        def on_train_start(self, trainer, pl_module) -> None:
            if trainer.is_global_zero:  # the loaders are set up by now: batch counts known
                batches = trainer.num_training_batches
                per_epoch = f" of {int(batches):,} batches" if batches != float("inf") else ""
                log_line(f"{self.label}: up to {self._max_epochs(trainer)} epochs{per_epoch}")

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.epoch_start = time.perf_counter()
            self.validated = False

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self.validated = True

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            # Validation of this epoch has run by now (Lightning validates inside the epoch).
            self.seconds.append(time.perf_counter() - self.epoch_start)
            if trainer.is_global_zero:
                log_line(self.line(trainer))

        def line(self, trainer) -> str:
            """The line of the epoch that just ended."""
            done = trainer.current_epoch + 1
            max_epochs = self._max_epochs(trainer)
            metrics = {
                k.removesuffix("_epoch"): float(v)
                for k, v in trainer.callback_metrics.items()
                if not k.endswith("_step")
            }
            parts = []
            value = metrics.get(self.monitor) if self.validated else None
            if value is not None:
                better = max if self.mode == "max" else min
                self.best = value if self.best is None else better(self.best, value)
                parts.append(f"{self.monitor} {value:.4f} (best {self.best:.4f})")
            else:
                parts.append(f"{self.monitor} - (not validated this epoch)")
            if "train_loss" in metrics:
                parts.append(f"train_loss {metrics['train_loss']:.4f}")
            mean = sum(self.seconds) / len(self.seconds)
            parts.append(f"{mean:.2f}s/epoch" if mean < 10 else f"{mean:.0f}s/epoch")
            if isinstance(max_epochs, int):
                left = max(0, max_epochs - done) * mean
                parts.append(f"<= {format_duration(left)} left")
            return f"{self.label} epoch {done}/{max_epochs}: " + ", ".join(parts)

        @staticmethod
        def _max_epochs(trainer) -> Any:
            m = trainer.max_epochs
            return m if isinstance(m, int) and m >= 0 else "?"

    return EpochLog


def epoch_log_callback(label: str, monitor: str, mode: str = "max"):
    """A fresh ``EpochLog`` Lightning callback (the class is built on first use: importing
    Lightning costs seconds)."""
    if "EpochLog" not in globals():
        globals()["EpochLog"] = _define_epoch_log()
    return globals()["EpochLog"](label, monitor, mode)
