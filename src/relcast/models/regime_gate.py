"""A gate that reweights relationship features by market regime (bull / bear / sideways).

The design names "dynamic relationship weighting by market regime": in a falling market
stocks move with the index, in a calm one sector stories matter more. The regime of each
date comes from :func:`relcast.features.regime_detection.detect_regime` (the index's own
past, no data after t), and :class:`RegimeGate` learns, per regime, how much to scale the
index-relationship columns and the sector-relationship columns of Stage3's input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from relcast.features.regime_detection import NUM_REGIMES, REGIME_COLUMNS, REGIME_NAMES


def gate_columns(
    names: Sequence[str], index_symbols: Sequence[str] = ()
) -> tuple[list[int], list[int]]:
    """Split relationship column names into (index columns, sector columns).

    Index columns: ``attention_to_index`` and ``attn_<SYMBOL>`` / ``ctr_sim_<SYMBOL>`` of an
    index symbol. Sector columns: ``attention_to_sector``. Everything else is left ungated.
    """
    index_names = {"attention_to_index"}
    for s in index_symbols:
        index_names |= {f"attn_{s}", f"ctr_sim_{s}"}
    index_cols = [i for i, n in enumerate(names) if n in index_names]
    sector_cols = [i for i, n in enumerate(names) if n == "attention_to_sector"]
    return index_cols, sector_cols


class RegimeGate(nn.Module):
    """Scale index vs sector relationship columns by a learned weight per regime.

    ``scale[r] = 2 * sigmoid(logit[r])`` with ``logit: [3, 2]`` (regime x {index, sector}),
    initialised at 0 so the gate starts as the identity and can damp (towards 0) or boost
    (towards 2) a group. Columns in neither group pass through unchanged. Used by Stage3 as
    an input layer on the relationship block when regime gating is enabled.
    """

    def __init__(self, index_columns: Sequence[int], sector_columns: Sequence[int]) -> None:
        super().__init__()
        overlap = set(index_columns) & set(sector_columns)
        if overlap:
            raise ValueError(f"columns {sorted(overlap)} are both index and sector columns")
        self.register_buffer(
            "index_columns", torch.as_tensor(list(index_columns), dtype=torch.long)
        )
        self.register_buffer(
            "sector_columns", torch.as_tensor(list(sector_columns), dtype=torch.long)
        )
        self.logit = nn.Parameter(torch.zeros(NUM_REGIMES, 2))

    @classmethod
    def from_names(cls, names: Sequence[str], index_symbols: Sequence[str] = ()) -> RegimeGate:
        """A gate over the columns :func:`gate_columns` finds in ``names``."""
        return cls(*gate_columns(names, index_symbols))

    def scales(self) -> torch.Tensor:
        """``[3, 2]`` current (index, sector) scale per regime."""
        return 2.0 * torch.sigmoid(self.logit)

    def forward(self, relationship: torch.Tensor, regime: torch.Tensor) -> torch.Tensor:
        """``relationship [B, L, K]``, ``regime long [B, L]`` -> gated ``[B, L, K]``."""
        K = relationship.shape[-1]
        w = self.scales()[regime]  # (B, L, 2)
        col_scale = relationship.new_ones(*regime.shape, K)  # (B, L, K)
        if self.index_columns.numel():
            col_scale[..., self.index_columns] = w[..., :1].expand(
                *regime.shape, self.index_columns.numel()
            )
        if self.sector_columns.numel():
            col_scale[..., self.sector_columns] = w[..., 1:].expand(
                *regime.shape, self.sector_columns.numel()
            )
        return relationship * col_scale  # (B, L, K)


class RegimeGatedModel(nn.Module):
    """A Stage3 model whose index and sector relationship inputs pass a :class:`RegimeGate`.

    The regime of every window step is read from the step's own one-hot regime columns
    (:data:`REGIME_COLUMNS`, part of ``x``), so each step is gated by the regime of its own
    date, computed from the index up to that date; training, evaluation, ``predict`` and
    ``update`` need nothing beyond the usual batch. Everything else about the wrapped model
    (``config``, outputs, :meth:`interpret`) is unchanged.

    Args:
        model: a registry model (``relcast.models.temporal.registry.create_model``).
        regime_columns: positions in ``x`` of the bull, bear and sideways columns.
        index_columns, sector_columns: positions in ``x`` the gate scales.
    """

    def __init__(
        self,
        model: nn.Module,
        regime_columns: Sequence[int],
        index_columns: Sequence[int],
        sector_columns: Sequence[int],
    ) -> None:
        super().__init__()
        if len(regime_columns) != NUM_REGIMES:
            raise ValueError(f"need {NUM_REGIMES} regime columns, got {list(regime_columns)}")
        if not len(index_columns) and not len(sector_columns):
            raise ValueError("the regime gate has no index or sector column to scale")
        F = model.config.num_features
        used = [*regime_columns, *index_columns, *sector_columns]
        if min(used) < 0 or max(used) >= F:
            raise ValueError(f"gate columns {used} fall outside the model's {F} inputs")
        self.model = model
        self.gate = RegimeGate(index_columns, sector_columns)
        self.register_buffer(
            "regime_columns", torch.as_tensor(list(regime_columns), dtype=torch.long)
        )

    @classmethod
    def wrap(
        cls, model: nn.Module, names: Sequence[str], index_symbols: Sequence[str] = ()
    ) -> RegimeGatedModel:
        """Gate ``model`` whose inputs are named ``names`` (the Stage3 input names)."""
        names = list(names)
        missing = [c for c in REGIME_COLUMNS if c not in names]
        if missing:
            raise ValueError(
                f"regime gating needs the regime feature columns {missing}: build the "
                "features with build_features(..., regime_window=...)"
            )
        index_cols, sector_cols = gate_columns(names, index_symbols)
        if not index_cols and not sector_cols:
            raise ValueError(
                "regime gating found no index or sector relationship column (attention_to_"
                "index, attention_to_sector, attn_/ctr_sim_<index symbol>); use extractor "
                "v1, v3 or v1+v2"
            )
        regime_cols = [names.index(c) for c in REGIME_COLUMNS]
        return cls(model, regime_cols, index_cols, sector_cols)

    GATE_LR_FACTOR = 10.0
    """The gate's six logits learn this many times faster than the model's weights: at
    the model's rate they move by at most ``lr`` per step, so a few epochs would leave
    every scale within a few percent of 1."""

    @property
    def config(self):
        """The wrapped model's config."""
        return self.model.config

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict]:
        """Optimiser parameter groups: the model at ``lr``, the gate at
        ``lr * GATE_LR_FACTOR`` without weight decay (decay would pull scales to 1)."""
        return [
            {"params": list(self.model.parameters()), "lr": lr, "weight_decay": weight_decay},
            {
                "params": list(self.gate.parameters()),
                "lr": lr * self.GATE_LR_FACTOR,
                "weight_decay": 0.0,
            },
        ]

    def spec(self) -> dict[str, list[int]]:
        """The column positions, to rebuild the wrapper around a loaded model."""
        return {
            "regime_columns": self.regime_columns.tolist(),
            "index_columns": self.gate.index_columns.tolist(),
            "sector_columns": self.gate.sector_columns.tolist(),
        }

    def scales(self) -> dict[str, dict[str, float]]:
        """Current ``{regime: {"index": scale, "sector": scale}}`` of the gate."""
        s = self.gate.scales().detach().cpu().tolist()
        return {r: {"index": s[k][0], "sector": s[k][1]} for k, r in enumerate(REGIME_NAMES)}

    def gated(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with its ``x`` scaled by the regime of every step."""
        x = batch["x"]  # (B, L, F)
        regime = x.index_select(-1, self.regime_columns).argmax(-1)  # (B, L)
        return {**batch, "x": self.gate(x, regime)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(self.gated(batch))

    def interpret(self, batches, **kwargs):
        """The wrapped model's ``interpret`` (TFT) on gated batches."""
        return self.model.interpret((self.gated(b) for b in batches), **kwargs)
