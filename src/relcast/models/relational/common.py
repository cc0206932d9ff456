"""Pieces the relational models share: their config base and a masked softmax."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from relcast.models.temporal.registry import TemporalConfig


@dataclass
class RelationalConfig(TemporalConfig):
    """:class:`TemporalConfig` plus the ranking term of the loss."""

    rank_weight: float = 0.1
    """Weight of the pairwise hinge on wrongly ordered stock pairs of a date (0: none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank_weight < 0:
            raise ValueError(f"rank_weight must be >= 0, got {self.rank_weight}")


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax of ``scores`` over ``dim`` among the ``allowed`` entries; 0 elsewhere, and 0
    everywhere along a slice with no allowed entry (no NaN, no uniform fallback)."""
    low = torch.finfo(scores.dtype).min
    logits = torch.where(allowed, scores, low)
    weights = torch.softmax(logits, dim=dim)
    return torch.where(allowed, weights, 0.0)
