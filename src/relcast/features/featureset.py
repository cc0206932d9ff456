"""The model-ready feature tensor shared by Stage1, Stage2 and Stage3."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(eq=False)
class FeatureSet:
    """Features aligned with a :class:`~relcast.data.panel.Panel`.

    Attributes:
        dates: ``datetime64[ns] [T]``.
        symbols: ``str [N]``.
        names: the F feature names, in column order.
        values: ``float32 [T, N, F]``, normalised; finite wherever ``mask`` is True
            (NaN elsewhere).
        mask: ``bool [T, N]``: the symbol traded at t and every feature is defined
            (warm-up after listing is over).
        groups: named column groups, e.g. ``{"own": [...], "index": [...], "calendar": [...]}``;
            every name in ``names`` is in exactly one group.
        store: the memory-mapped store the values map (``relcast.store.memmap``), whose
            stock-major copy Stage3 then reads; None for features held in memory.
    """

    dates: np.ndarray
    symbols: np.ndarray
    names: list[str]
    values: np.ndarray
    mask: np.ndarray
    groups: dict[str, list[str]] = field(default_factory=dict)
    store: Any = None

    def __post_init__(self) -> None:
        T, N, F = self.values.shape
        if (len(self.dates), len(self.symbols), len(self.names)) != (T, N, F):
            raise ValueError(
                f"values {self.values.shape} does not match dates/symbols/names "
                f"({len(self.dates)}, {len(self.symbols)}, {len(self.names)})"
            )
        if self.mask.shape != (T, N):
            raise ValueError(f"mask has shape {self.mask.shape}, expected {(T, N)}")

    def columns(self, names: list[str]) -> np.ndarray:
        """Indices of ``names`` in the feature axis."""
        lookup = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in lookup]
        if missing:
            raise KeyError(f"features not in set: {missing[:10]}")
        return np.array([lookup[n] for n in names], dtype=int)

    def group(self, *groups: str) -> np.ndarray:
        """``float32 [T, N, F_g]`` for the named groups, in the given order."""
        names = [n for g in groups for n in self.groups[g]]
        return self.values[:, :, self.columns(names)]
