"""What a run's store is built with, read once from the run's config."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StoreSettings:
    """What the store's builder needs of a run (read once from its config): the last
    training date's index, the label horizons and delay, the regime detector's window
    (None: no regime features), Alpha158 on or off, the per-stock ``sector_ids`` and the
    features' block size in bytes (None: the default)."""

    train_end: int
    horizons: int
    label_delay: int = 0
    regime_window: int | None = None
    alpha158: bool = False
    sector_ids: np.ndarray | None = None
    block_bytes: int | None = None
