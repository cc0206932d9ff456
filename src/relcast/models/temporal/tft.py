"""Temporal Fusion Transformer for Stage3 (Lim et al., 2021), written for relcast.

Reading order follows the data: static covariate encoders (stock id, sector) -> four
context vectors -> variable selection over the F time-varying inputs -> LSTM encoder with
a gated skip -> static enrichment -> interpretable multi-head attention (causal) ->
position-wise GRN -> quantile heads for H horizons.

Differences from the paper, on purpose:
- No decoder over known-future inputs: the batch holds the past only, and all H horizons
  are forecast directly from the origin step. Running the heads at every position gives
  ``pred_all`` (each position sees only steps <= itself, through the LSTM and the causal
  attention mask).
- Each input variable is embedded into a small width ``variable_hidden_size`` and runs its
  own GRN there (pytorch-forecasting's ``hidden_continuous_size``), which keeps the
  ``[B, L, F, width]`` tensors small. The selection-weighted sum of the variables' GRN
  outputs is then lifted to ``hidden_size`` by one linear map shared by all variables, so a
  variable reaches the model only through its weight times a layer-normed vector and the
  weights stay an honest importance measure. With ``variable_hidden_size == hidden_size``
  this is the paper's network plus one extra linear layer.
- The selection logits start near zero (uniform weights): no input is favoured before
  training has seen data.
- Sequence batches (a chunk of C steps of one stock, see the registry): the LSTM runs over
  the whole chunk from the static context state, and the attention mask is banded causal,
  so each step attends to its last ``lookback`` steps only, as the origin of a window of
  ``lookback`` steps does. One chunk then yields all its forecasts. The first scored step
  of a chunk (its window = the chunk's first ``lookback`` steps) gets exactly the windowed
  forecast; later steps differ only through the LSTM state, which has seen more history
  (the attention over the band is the windowed attention, tested exactly).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from relcast.models.temporal.losses import QuantileHead
from relcast.models.temporal.registry import TemporalConfig, is_sequence_batch, register_model
from relcast.models.temporal.tft_parts import (
    GateAddNorm,
    GatedResidualNetwork,
    GroupedLinear,
    InterpretableMultiHeadAttention,
    VariableSelectionNetwork,
    banded_attention,
    window_mean,
)

__all__ = [
    "GatedResidualNetwork",
    "InterpretableMultiHeadAttention",
    "TFTConfig",
    "TemporalFusionTransformer",
    "VariableSelectionNetwork",
]

STATIC_NAMES = ("stock", "sector")


@dataclass
class TFTConfig(TemporalConfig):
    """TFT hyperparameters beyond the common ones (presets live in
    ``relcast/config/presets/*.yaml``; the config section ``stage3.tft`` sets these fields)."""

    num_heads: int = 4
    """Attention heads; hidden_size must be divisible by it."""
    variable_hidden_size: int = 16
    """Width of each input variable's embedding and GRN inside variable selection."""
    lstm_layers: int = 1
    """Layers of the LSTM encoder."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        if self.variable_hidden_size < 1 or self.lstm_layers < 1:
            raise ValueError("variable_hidden_size and lstm_layers must be >= 1")


# ---------------------------------------------------------------- the model


@register_model("tft")
class TemporalFusionTransformer(nn.Module):
    """Temporal Fusion Transformer: multi-horizon quantile forecasts with interpretation.

    ``forward(batch)`` takes ``x [B, L, F]``, ``stock_id [B]``, ``sector_id [B]`` and
    returns ``pred [B, H, Q]``, ``pred_all [B, L, H, Q]``, ``variable_importance [B, F]``
    (selection weights averaged over time), ``static_importance [B, 2]`` (stock, sector),
    ``attention [B, heads, L]`` (the origin step's attention over the past, per head) and
    ``attention_all [B, heads, L, L]`` (every step's causal attention).

    On a sequence batch (``x [B, C, F]`` with ``origin [B, C]``): ``pred [B, C, H, Q]`` (a
    forecast at every step), ``variable_importance [B, C, F]`` (each step's mean over its
    window of ``lookback`` steps), ``attention [B, C, heads, lookback]`` (each step's weights
    on its window, index -1 = itself) and the banded ``attention_all [B, heads, C, C]``.
    """

    Config = TFTConfig

    def __init__(self, config: TFTConfig):
        super().__init__()
        self.config = c = config
        d, dv = c.hidden_size, c.variable_hidden_size

        # static covariate encoders -> 4 contexts
        self.stock_embedding = nn.Embedding(c.num_stocks, d)
        self.sector_embedding = nn.Embedding(c.num_sectors, d)
        self.static_selection = VariableSelectionNetwork(len(STATIC_NAMES), d, d, None, c.dropout)
        self.context_selection = GatedResidualNetwork(d, d, d, dropout=c.dropout)
        self.context_enrichment = GatedResidualNetwork(d, d, d, dropout=c.dropout)
        self.context_h = GatedResidualNetwork(d, d, d, dropout=c.dropout)
        self.context_c = GatedResidualNetwork(d, d, d, dropout=c.dropout)

        # time-varying inputs: one scalar -> dv embedding per variable, then selection
        self.input_embedding = GroupedLinear(c.num_features, 1, dv)
        self.temporal_selection = VariableSelectionNetwork(c.num_features, dv, d, d, c.dropout)

        # sequence processing
        self.lstm = nn.LSTM(
            d,
            d,
            num_layers=c.lstm_layers,
            batch_first=True,
            dropout=c.dropout if c.lstm_layers > 1 else 0.0,
        )
        self.lstm_gate = GateAddNorm(d, d, c.dropout)
        self.enrichment = GatedResidualNetwork(d, d, d, context_dim=d, dropout=c.dropout)
        self.attention = InterpretableMultiHeadAttention(d, c.num_heads, c.dropout)
        self.attention_gate = GateAddNorm(d, d, c.dropout)
        self.positionwise = GatedResidualNetwork(d, d, d, dropout=c.dropout)
        self.output_gate = GateAddNorm(d, d, 0.0)
        self.head = QuantileHead(d, c.horizons, c.quantiles)

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        x = batch["x"]
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.num_features:
            raise ValueError(f"x must be [B, L, {c.num_features}], got {tuple(x.shape)}")
        B, L, _ = x.shape
        sequence = is_sequence_batch(batch)
        stock_id = batch.get("stock_id")
        sector_id = batch.get("sector_id")
        if stock_id is None:
            stock_id = torch.zeros(B, dtype=torch.long, device=x.device)
        if sector_id is None:
            sector_id = torch.zeros(B, dtype=torch.long, device=x.device)

        # static covariates -> contexts
        ctx = self._contexts(stock_id, sector_id)
        c_selection = ctx["c_selection"].unsqueeze(1)  # (B, 1, d)
        c_enrichment = ctx["c_enrichment"].unsqueeze(1)  # (B, 1, d)
        h0 = ctx["h"].transpose(0, 1).contiguous()  # (layers, B, d)
        c0 = ctx["c"].transpose(0, 1).contiguous()

        # variable selection over the F inputs at every step
        # == temporal_selection(input_embedding(x[..., None]), c_selection), ~2x faster
        selected, var_weights = self.temporal_selection.forward_scalar(
            x, self.input_embedding, c_selection
        )  # (B, L, d), (B, L, F)

        # local processing: LSTM encoder with a gated skip
        lstm_out, _ = self.lstm(selected, (h0, c0))  # (B, L, d)
        temporal = self.lstm_gate(lstm_out, selected)  # (B, L, d)

        # static enrichment, then causal interpretable attention
        enriched = self.enrichment(temporal, c_enrichment)  # (B, L, d)
        attn_out, attn = self.attention(enriched, causal=True, band=c.lookback)  # (B, h, L, L)
        pred_all = self._decode(attn_out, enriched, temporal)  # (B, L, H, Q)
        static_weights = ctx["static_weights"]
        if sequence:
            return {
                "pred": pred_all,  # (B, C, H, Q)
                "pred_all": pred_all,
                "variable_importance": window_mean(var_weights.detach(), c.lookback),
                "static_importance": static_weights,  # (B, S)
                "attention": banded_attention(attn.detach(), c.lookback),  # (B, C, h, lookback)
                "attention_all": attn,  # (B, h, C, C), banded
            }
        return {
            "pred": pred_all[:, -1],  # (B, H, Q)
            "pred_all": pred_all,
            "variable_importance": var_weights.mean(1),  # (B, F)
            "static_importance": static_weights,  # (B, S)
            "attention": attn[:, :, -1],  # (B, h, L)
            "attention_all": attn,  # (B, h, L, L)
        }

    def _contexts(self, stock_id: Tensor, sector_id: Tensor) -> dict[str, Tensor]:
        """The static covariate encoders: selection and enrichment contexts ``[B, d]``, the
        LSTM's initial state ``h, c [B, layers, d]`` and the static weights ``[B, 2]``."""
        c = self.config
        static = torch.stack(
            [self.stock_embedding(stock_id), self.sector_embedding(sector_id)], dim=1
        )  # (B, S, d)
        static, static_weights = self.static_selection(static)  # (B, d), (B, S)
        layers = (-1, c.lstm_layers, -1)
        return {
            "c_selection": self.context_selection(static),  # (B, d)
            "c_enrichment": self.context_enrichment(static),  # (B, d)
            "h": self.context_h(static).unsqueeze(1).expand(*layers),  # (B, layers, d)
            "c": self.context_c(static).unsqueeze(1).expand(*layers),  # (B, layers, d)
            "static_weights": static_weights,
        }

    def _decode(self, attn_out: Tensor, enriched: Tensor, temporal: Tensor) -> Tensor:
        """Gated attention output -> position-wise GRN -> gated skip -> quantile heads."""
        h = self.attention_gate(attn_out, enriched)  # (B, L, d)
        h = self.positionwise(h)  # (B, L, d)
        h = self.output_gate(h, temporal)  # (B, L, d)
        return self.head(h)  # (B, L, H, Q)

    # ------------------------------------------------------------ one step at a time

    def stream_start(self, stock_id: Tensor, sector_id: Tensor) -> dict[str, Tensor]:
        """The state of R chunks before their first step (:mod:`relcast.training.stream`):
        the static contexts, the LSTM's initial state and an empty attention window. Every
        tensor is ``[R, ...]``, so rows can be picked, saved and resumed independently."""
        c = self.config
        ctx = self._contexts(stock_id, sector_id)
        del ctx["static_weights"]
        R, d, W = len(stock_id), c.hidden_size, c.lookback - 1
        ctx["h"], ctx["c"] = ctx["h"].contiguous(), ctx["c"].contiguous()
        ctx["keys"] = torch.zeros(R, W, d, device=stock_id.device)  # (R, W, heads * dh)
        ctx["values"] = torch.zeros(R, W, self.attention.head_dim, device=stock_id.device)
        ctx["seen"] = torch.zeros(R, dtype=torch.long, device=stock_id.device)
        return ctx

    def stream_step(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """One date ``x [R, F]`` of R chunks -> ``(pred [R, H, Q], state)``: the forward pass
        of a sequence batch at that step (the LSTM from the chunk's start, attention over the
        chunk's last ``lookback`` steps), with the earlier steps read from ``state``."""
        if x.dim() != 2 or x.shape[-1] != self.config.num_features:
            raise ValueError(f"x must be [R, {self.config.num_features}], got {tuple(x.shape)}")
        x = x.unsqueeze(1)  # (R, 1, F)
        selected, _ = self.temporal_selection.forward_scalar(
            x, self.input_embedding, state["c_selection"].unsqueeze(1)
        )  # (R, 1, d)
        h0, c0 = (state[k].transpose(0, 1).contiguous() for k in ("h", "c"))
        lstm_out, (h, cell) = self.lstm(selected, (h0, c0))  # (R, 1, d)
        temporal = self.lstm_gate(lstm_out, selected)
        enriched = self.enrichment(temporal, state["c_enrichment"].unsqueeze(1))  # (R, 1, d)
        attn_out, keys, values = self.attention.step(
            enriched, state["keys"], state["values"], state["seen"]
        )
        pred = self._decode(attn_out, enriched, temporal)[:, 0]  # (R, H, Q)
        window = state["keys"].shape[1]
        return pred, {
            **state,
            "h": h.transpose(0, 1),
            "c": cell.transpose(0, 1),
            "keys": keys,
            "values": values,
            "seen": (state["seen"] + 1).clamp(max=window),
        }

    INTERPRET_STEPS = 16_384
    """Time steps per forward pass inside :meth:`interpret`: a large batch of long windows is
    cut into slices, so interpreting costs a bounded amount of memory whatever the loader's
    batch size (each step holds ``num_features x variable_hidden_size`` floats per layer)."""

    def _explain(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The outputs :meth:`interpret` reads, computed slice by slice (bounded memory)."""
        B, L = batch["x"].shape[:2]
        rows = max(1, self.INTERPRET_STEPS // L)
        keys = ("variable_importance", "static_importance", "attention")
        parts = []
        for i in range(0, B, rows):
            part = {k: v[i : i + rows] if torch.is_tensor(v) and len(v) == B else v
                    for k, v in batch.items()}  # fmt: skip
            out = self(part)
            parts.append({k: out[k] for k in keys})
        return {k: torch.cat([p[k] for p in parts]) for k in keys}

    @torch.no_grad()
    def interpret(
        self,
        batch_or_outputs: Mapping[str, Tensor] | Iterable[Mapping[str, Tensor]],
        feature_names: Sequence[str] | None = None,
    ) -> dict:
        """Aggregate importance and attention over many samples.

        Args:
            batch_or_outputs: a batch (``x``, ``stock_id``, ``sector_id``; the model is run in
                eval mode), forward outputs, or an iterable of either (e.g. a DataLoader or a
                list of ``{**batch, **outputs}``). Per-stock importance needs ``stock_id`` in
                the dicts. Window and sequence batches both work: of a sequence batch, every
                ``origin`` step counts as one sample (its window's weights and attention).
            feature_names: names of the F inputs; default ``config.feature_names`` or x0...

        Returns:
            ``variable_importance``: dict name -> mean selection weight, sorted descending;
            ``static_importance``: dict stock/sector -> weight;
            ``attention``: ``np.ndarray [L]``, the origin step's attention over past steps
            averaged over samples and heads (index -1 = the origin itself);
            ``per_stock``: DataFrame, index stock_id, one column per feature.
        """
        import pandas as pd

        items = [batch_or_outputs] if isinstance(batch_or_outputs, Mapping) else batch_or_outputs
        var_imp, static_imp, attention, stock_ids = [], [], [], []
        was_training = self.training
        self.eval()
        try:
            for item in items:
                out = item if "variable_importance" in item else {**item, **self._explain(item)}
                if is_sequence_batch(out):  # one sample per origin step
                    o = out["origin"]  # (B, C)
                    var_imp.append(out["variable_importance"][o].float().cpu())  # (M, F)
                    static = out["static_importance"][:, None].expand(-1, o.shape[1], -1)
                    static_imp.append(static[o].float().cpu())  # (M, S)
                    attention.append(out["attention"].float().mean(2)[o].cpu())  # (M, L)
                    if "stock_id" in out:
                        stock_ids.append(out["stock_id"][:, None].expand_as(o)[o].cpu())
                    continue
                var_imp.append(out["variable_importance"].float().cpu())
                static_imp.append(out["static_importance"].float().cpu())
                attention.append(out["attention"].float().mean(1).cpu())  # (B, L)
                if "stock_id" in out:
                    stock_ids.append(out["stock_id"].cpu())
        finally:
            self.train(was_training)
        if not var_imp:
            raise ValueError("interpret() got no batches")

        names = list(feature_names or self.config.feature_names or [])
        if not names:
            names = [f"x{i}" for i in range(self.config.num_features)]
        if len(names) != self.config.num_features:
            raise ValueError(f"{len(names)} feature names for {self.config.num_features} inputs")

        var = torch.cat(var_imp).numpy()  # (n, F)
        mean_var = var.mean(0)
        order = np.argsort(-mean_var, kind="stable")
        per_stock = pd.DataFrame(columns=names, dtype=float)
        if len(stock_ids) == len(var_imp):
            per_stock = (
                pd.DataFrame(var, columns=names)
                .assign(stock_id=torch.cat(stock_ids).numpy())
                .groupby("stock_id")
                .mean()
            )
        return {
            "variable_importance": {names[i]: float(mean_var[i]) for i in order},
            "static_importance": dict(
                zip(STATIC_NAMES, torch.cat(static_imp).mean(0).tolist(), strict=True)
            ),
            "attention": torch.cat(attention).mean(0).numpy(),
            "per_stock": per_stock,
        }
