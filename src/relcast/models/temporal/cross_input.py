"""The ``rawconcat`` input layer: every stock's own indicators at a date, projected once per date.

The design's "original approach" feeds each target stock's model the own indicators of all N
stocks side by side (``N * F_own`` inputs per step: 45,000 at 1,026 stocks x 44 columns). A
temporal model's first operation on that block is a linear map, and the block is the same for
every stock of a date. :class:`CrossSectionInput` therefore learns one linear map of the
block to ``width`` features, applies it to each date of a batch once (the loader sends the
batch's distinct dates, ``cross [U, N * F_own]``, and where each step reads,
``cross_index [B, S]``), and puts the result in front of the stock's own ``x``. A model on
the raw block would compute the same map for every (stock, step) row: ``B * S`` rows instead
of ``U`` dates, and its input matrix of ``N * F_own`` x (the model's first width) weights
instead of ``N * F_own`` x ``width``. The map is a rank-``width`` factorisation of what a
model's own input layer would learn on the raw block (a learned factor model of the market).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


def market_names(width: int) -> list[str]:
    """Names of the projection's ``width`` outputs, the first inputs of the wrapped model."""
    return [f"market_{k}" for k in range(width)]


class CrossSectionInput(nn.Module):
    """A Stage3 model whose input starts with a learned projection of the whole cross-section.

    Args:
        model: a registry model built for ``width + F`` inputs (F: the batch's own ``x``).
        cross_width: the width of one date's cross-section block (``N * F_own`` [+ N]).
        width: the projection's output features.
    """

    def __init__(self, model: nn.Module, cross_width: int, width: int) -> None:
        super().__init__()
        self.model = model
        self.project = nn.Linear(int(cross_width), int(width))

    @property
    def config(self):
        """The wrapped model's config (its ``num_features`` counts the projection's width)."""
        return self.model.config

    def spec(self) -> dict[str, int]:
        """The sizes, to rebuild the wrapper around a loaded model."""
        return {"cross_width": self.project.in_features, "width": self.project.out_features}

    def inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch the wrapped model reads: ``x`` = [projected block, the stock's ``x``]."""
        if "cross" not in batch:
            raise ValueError("a rawconcat model needs the loader's cross and cross_index")
        index = batch["cross_index"]  # (B, S), -1 at a sequence batch's right padding
        z = self.project(batch["cross"].to(self.project.weight.dtype))  # (U, width)
        z = z[index.clamp(min=0)] * (index >= 0).unsqueeze(-1).to(z.dtype)  # (B, S, width)
        x = batch["x"]
        return {**batch, "x": torch.cat([z.to(x.dtype), x], dim=-1)}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.model(self.inputs(batch))

    def interpret(self, batches, feature_names=None, **kwargs):
        """The wrapped model's interpretation (a TFT's), the projection's outputs named
        ``market_<k>``."""
        names = market_names(self.project.out_features) + list(feature_names or [])
        with torch.no_grad():
            if isinstance(batches, Mapping):
                batches = self.inputs(batches)
            else:
                batches = (self.inputs(b) for b in batches)
            return self.model.interpret(batches, feature_names=names or None, **kwargs)
