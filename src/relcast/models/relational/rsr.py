"""An RSR-style relational LSTM (Feng et al., "Temporal Relational Ranking for Stock
Prediction", TOIS 2019), from the paper: an LSTM per stock, then a temporal graph
convolution over the universe's industry relation.

1. An LSTM reads each stock's window; its last hidden state is the stock's encoding ``e_i``.
2. Temporal graph convolution: stock i gathers the encodings of the stocks related to it
   (the same industry, itself excluded, both unmasked that date) with strengths
   softmax-normalised over those stocks:
   - explicit (RSR-E): ``(e_i . e_j) * phi(w . a_ij + b)``;
   - implicit (RSR-I): ``phi(w_h . e_i + w_t . e_j + w . a_ij + b)``;
   where ``a_ij`` is the one-hot of the shared industry, so ``w . a_ij`` is a learned weight
   of that industry, and phi a leaky ReLU (the paper's). A stock with no related stock
   gathers 0. With the industry relation alone, ``w . a_ij + b`` is the same for every j
   related to i: in RSR-E it sets the softmax's temperature per industry.
3. The forecast is a fully connected layer on ``[e_i, gathered_i]`` (written as
   ``own(e_i) + relational(gathered_i)``, the second without bias), a leaky ReLU and the
   quantile head: with no edges it is exactly the LSTM's forecast (:meth:`lstm_forecast`).
Loss (training side): squared / pinball error plus ``rank_weight`` times the pairwise hinge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from relcast.models.relational.common import RelationalConfig, masked_softmax
from relcast.models.temporal.losses import QuantileHead
from relcast.models.temporal.registry import register_model


@dataclass
class RSRConfig(RelationalConfig):
    """The relational LSTM's hyperparameters beyond the common ones."""

    relation: str = "explicit"
    """``"explicit"`` (RSR-E) or ``"implicit"`` (RSR-I) relation strength."""
    num_layers: int = 1
    """Stacked LSTM layers of the sequential encoder."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.relation not in ("explicit", "implicit"):
            raise ValueError(f"relation must be 'explicit' or 'implicit', got {self.relation!r}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")


def industry_relation(sector_id: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``bool [D, N, N]``: i and j share an industry (id >= 0), i != j, both unmasked."""
    same = (sector_id[:, None] == sector_id[None, :]) & (sector_id[:, None] >= 0)  # (N, N)
    same &= ~torch.eye(len(sector_id), dtype=torch.bool, device=sector_id.device)
    return same[None] & mask[:, :, None] & mask[:, None, :]


@register_model("rsr")
class RelationalLSTM(nn.Module):
    """RSR-style relational LSTM (see the module docstring)."""

    Config = RSRConfig
    cross_section = True

    def __init__(self, config: RSRConfig) -> None:
        super().__init__()
        self.config = c = config
        d = c.hidden_size
        self.lstm = nn.LSTM(
            c.num_features,
            d,
            num_layers=c.num_layers,
            batch_first=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
        )
        self.industry_weight = nn.Parameter(torch.zeros(c.num_sectors))  # w . a_ij
        self.relation_bias = nn.Parameter(torch.ones(()))  # b
        if c.relation == "implicit":
            self.head_weight = nn.Linear(d, 1, bias=False)  # w_h
            self.tail_weight = nn.Linear(d, 1, bias=False)  # w_t
        self.own = nn.Linear(d, d)
        self.relational = nn.Linear(d, d, bias=False)
        self.dropout = nn.Dropout(c.dropout)
        self.head = QuantileHead(d, c.horizons, c.quantiles)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x [D, N, L, F] -> e [D, N, d]``: the LSTM's last hidden state of each stock."""
        D, N, L, F_in = x.shape
        out, _ = self.lstm(x.reshape(D * N, L, F_in))  # (D * N, L, d)
        return out[:, -1].reshape(D, N, -1)

    def gather(self, e: torch.Tensor, sector_id: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The temporal graph convolution: ``e [D, N, d] -> [D, N, d]``."""
        related = industry_relation(sector_id, mask)  # (D, N, N)
        e = torch.where(mask[..., None], e, 0.0)
        ind = self.industry_weight[sector_id.clamp(min=0)]  # (N,) weight of i's industry
        rel = ind[None, :, None] + self.relation_bias  # (1, N, 1): w . a_ij + b, j related to i
        if self.config.relation == "explicit":
            strength = torch.einsum("dnk,dmk->dnm", e, e) * F.leaky_relu(rel)  # (D, N, N)
        else:
            pair = self.head_weight(e) + self.tail_weight(e).transpose(1, 2)  # (D, N, N)
            strength = F.leaky_relu(pair + rel)
        weights = masked_softmax(strength, related, dim=2)  # over the stocks j related to i
        return torch.einsum("dnm,dmk->dnk", weights, e)  # (D, N, d)

    def forward_from(self, e: torch.Tensor, gathered: torch.Tensor | None) -> torch.Tensor:
        """The forecast ``[D, N, H, Q]`` from encodings and what they gathered (None: none)."""
        z = self.own(e)
        if gathered is not None:
            z = z + self.relational(gathered)
        return self.head(self.dropout(F.leaky_relu(z)))

    def lstm_forecast(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The forecast of the LSTM path alone (no relation), ``[D, N, H, Q]``."""
        return self.forward_from(self.encode(batch["x"]), None)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, mask = batch["x"], batch["mask"].bool()
        x = torch.where(mask[..., None, None], x, 0.0)
        e = self.encode(x)  # (D, N, d)
        gathered = self.gather(e, batch["sector_id"].long(), mask)
        return {"pred": self.forward_from(e, gathered)}
