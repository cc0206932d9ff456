"""LSTM and GRU Stage3 forecasters: light recurrent models for long lookbacks.

One class does both (the cell is the only difference, so the two cannot drift apart):

    x [B, L, F] -> Linear -> + stock / sector embeddings -> stacked LSTM|GRU -> QuantileHead

The head reads the hidden state at every step, so ``pred_all[:, l]`` is the forecast made at
position l from steps ``<= l`` (a recurrent net is causal by construction) and
``pred = pred_all[:, -1]`` for a window. On a sequence batch (a chunk of C steps) the state
starts at zero at the chunk start and runs through it: a scored step has seen between
``lookback`` steps (the first scored step, exactly its window) and C steps of history, so
the chunk's burn-in of ``lookback - 1`` steps gives every scored step at least the window
that windowed training gave it. The static covariates (stock id, sector) enter as embeddings
added to the projected input at every step.

On the CPU a GRU batch of at most :data:`SMALL_BATCH` rows (sequence training: ~15 chunks)
runs through :mod:`relcast.models.temporal.gru_cpu` (the same ``nn.GRU`` weights, a
hand-written backward pass, about half the time per step); larger batches use ``nn.GRU``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from relcast.models.temporal.gru_cpu import gru_forward
from relcast.models.temporal.losses import QuantileHead
from relcast.models.temporal.registry import TemporalConfig, origin_output, register_model

SMALL_BATCH = 64
"""Batches of at most this many rows run the GRU through :func:`gru_forward` on the CPU."""


@dataclass
class RecurrentConfig(TemporalConfig):
    """Hyperparameters of the LSTM/GRU forecaster (common fields in ``TemporalConfig``)."""

    num_layers: int = 2
    """Stacked recurrent layers (the design's small preset uses 2)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")


class RecurrentForecaster(nn.Module):
    """Stacked RNN over the window with a per-step multi-horizon quantile head."""

    Config = RecurrentConfig
    cell: type[nn.Module] = nn.LSTM

    def __init__(self, config: RecurrentConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.input_proj = nn.Linear(config.num_features, d)
        self.stock_emb = nn.Embedding(config.num_stocks, d)
        self.sector_emb = nn.Embedding(config.num_sectors, d)
        nn.init.normal_(self.stock_emb.weight, std=0.02)
        nn.init.normal_(self.sector_emb.weight, std=0.02)
        self.rnn = self.cell(
            input_size=d,
            hidden_size=d,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = QuantileHead(d, config.horizons, config.quantiles)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = batch["x"]  # (B, L, F)
        static = self.stock_emb(batch["stock_id"]) + self.sector_emb(batch["sector_id"])  # (B, d)
        h = self.input_proj(x) + static[:, None, :]  # (B, L, d)
        h = self.recur(h)  # (B, L, d), step l has seen steps <= l only
        pred_all = self.head(self.drop(h))  # (B, L, H, Q)
        return {"pred": origin_output(batch, pred_all), "pred_all": pred_all}

    def recur(self, h: Tensor) -> Tensor:
        """The stacked recurrence from a zero state, ``[B, L, d] -> [B, L, d]``."""
        return self.rnn(h)[0]


@register_model("lstm")
class LSTMForecaster(RecurrentForecaster):
    """Stacked LSTM forecaster (``create_model("lstm", ...)``)."""

    cell = nn.LSTM


@register_model("gru")
class GRUForecaster(RecurrentForecaster):
    """Stacked GRU forecaster (``create_model("gru", ...)``)."""

    cell = nn.GRU

    def recur(self, h: Tensor) -> Tensor:
        # a few chunks on the CPU: nn.GRU's per-step autograd overhead is the whole cost,
        # gru_cpu's hand-written backward halves it; larger batches are compute-bound, where
        # nn.GRU is faster (measured crossover ~96 rows). Same weights, same outputs.
        if h.device.type == "cpu" and h.shape[0] <= SMALL_BATCH:
            return gru_forward(self.rnn, h)
        return self.rnn(h)[0]


__all__ = ["GRUForecaster", "LSTMForecaster", "RecurrentConfig", "RecurrentForecaster"]
