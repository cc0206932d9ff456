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

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relcast.models.temporal.losses import QuantileHead
from relcast.models.temporal.registry import TemporalConfig, is_sequence_batch, register_model

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
    """TFT hyperparameters beyond the common ones (presets live in ``relcast/configs/*.yaml``;
    the config section ``stage3.tft`` sets these fields)."""

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


# ---------------------------------------------------------------- building blocks


class GroupedLinear(nn.Module):
    """G independent linear maps applied to ``[..., G, in] -> [..., G, out]``."""

    def __init__(self, groups: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init range
        self.weight = nn.Parameter(torch.empty(groups, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, out_dim).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("...gi,gio->...go", x, self.weight) + self.bias


class GateAddNorm(nn.Module):
    """``LayerNorm(skip + GLU(dropout(x)))``: the gate can switch a whole block off."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.glu = nn.Linear(in_dim, 2 * out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        # GLU as two contiguous matmuls: F.glu on the halves of one output runs its backward
        # on strided views, about twice as slow on CPU; same parameters, same numbers
        x = self.dropout(x)
        d = self.glu.out_features // 2
        value = F.linear(x, self.glu.weight[:d], self.glu.bias[:d])
        gate = F.linear(x, self.glu.weight[d:], self.glu.bias[d:])
        return self.norm(skip + value * torch.sigmoid(gate))


class GatedResidualNetwork(nn.Module):
    """GRN: ``GateAddNorm(W2 ELU(W1 x + Wc c), skip(x))`` with an optional context c."""

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.skip = nn.Linear(in_dim, out_dim) if in_dim != out_dim else nn.Identity()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.context = nn.Linear(context_dim, hidden_dim, bias=False) if context_dim else None
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.gate = GateAddNorm(hidden_dim, out_dim, dropout)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.finish(self.fc1(x), self.skip(x), context)

    def finish(self, h: Tensor, skip: Tensor, context: Tensor | None = None) -> Tensor:
        """The GRN after its first layer: ``h = fc1(x)`` and ``skip = skip(x)`` given."""
        if self.context is not None and context is not None:
            h = h + self.context(context)  # context broadcasts over time when given [B, 1, C]
        h = self.fc2(F.elu(h))
        return self.gate(h, skip)


class GroupedGRN(nn.Module):
    """G independent GRNs (one per input variable) on ``[..., G, d] -> [..., G, d]``."""

    def __init__(self, groups: int, dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = GroupedLinear(groups, dim, dim)
        self.fc2 = GroupedLinear(groups, dim, dim)
        self.glu = GroupedLinear(groups, dim, 2 * dim)
        self.dropout = nn.Dropout(dropout)
        self.norm_weight = nn.Parameter(torch.ones(groups, dim))
        self.norm_bias = nn.Parameter(torch.zeros(groups, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc2(F.elu(self.fc1(x)))
        h = x + F.glu(self.glu(self.dropout(h)), dim=-1)
        return F.layer_norm(h, h.shape[-1:]) * self.norm_weight + self.norm_bias


class VariableSelectionNetwork(nn.Module):
    """Soft selection over V input variables, conditioned on a static context.

    Input ``[..., V, d]`` (one embedding per variable); output the selected mix
    ``[..., hidden]`` and the selection weights ``[..., V]`` (softmax over variables).
    """

    def __init__(
        self,
        num_vars: int,
        var_dim: int,
        hidden_dim: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.weights_grn = GatedResidualNetwork(
            num_vars * var_dim, hidden_dim, num_vars, context_dim, dropout
        )
        # Near-uniform weights at the start (logits are layer-normed, so scale their gain):
        # no variable is favoured before training has seen any data.
        nn.init.constant_(self.weights_grn.gate.norm.weight, 0.1)
        self.var_grns = GroupedGRN(num_vars, var_dim, dropout)
        self.out = nn.Linear(var_dim, hidden_dim)

    def forward(self, emb: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        flat = emb.flatten(-2)  # (..., V * d)
        weights = torch.softmax(self.weights_grn(flat, context), dim=-1)  # (..., V)
        processed = self.var_grns(emb)  # (..., V, d)
        selected = self.out((processed * weights.unsqueeze(-1)).sum(-2))  # (..., hidden)
        return selected, weights

    def forward_scalar(
        self, x: Tensor, embedding: GroupedLinear, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``forward(embedding(x[..., None]), context)`` for V scalar inputs ``x [..., V]``.

        Same numbers, about half the time: the embedding of a scalar is affine in it, so
        the layers that read the embedding directly (the weights GRN's first layer and
        skip, each variable GRN's first layer) fold into the embedding and read ``x``
        itself, and the per-variable GRNs run in a variables-first layout ``[V, M, d]``
        where every grouped layer is one batched matmul with its bias fused
        (``baddbmm``), without the ``[..., V, d]`` copies that einsum makes. In training,
        the variable GRNs' dropout mask is shared over the time axis (``x`` is ``[B, L, V]``).
        """
        lead, V = x.shape[:-1], x.shape[-1]
        slope, offset = embedding.weight[:, 0, :], embedding.bias  # (V, d), (V, d)
        d = slope.shape[-1]

        # selection weights: Linear(flat embedding) == Linear'(x), weights folded
        grn = self.weights_grn
        w1 = grn.fc1.weight.view(-1, V, d)  # (hidden, V, d)
        h = F.linear(
            x,
            torch.einsum("vd,kvd->kv", slope, w1),
            grn.fc1.bias + torch.einsum("vd,kvd->k", offset, w1),
        )  # (..., hidden)
        if isinstance(grn.skip, nn.Linear):
            ws = grn.skip.weight.view(V, V, d)  # (out, V, d)
            skip = F.linear(
                x,
                torch.einsum("vd,ovd->ov", slope, ws),
                grn.skip.bias + torch.einsum("vd,ovd->o", offset, ws),
            )  # (..., V)
        else:  # d == 1: the flat embedding is already V wide
            skip = x * slope[:, 0] + offset[:, 0]
        weights = torch.softmax(grn.finish(h, skip, context), dim=-1)  # (..., V)

        # one GRN per variable, variables first: (V, M, d) with M = prod(lead)
        g = self.var_grns
        xt = x.reshape(-1, V).t().unsqueeze(-1)  # (V, M, 1)
        emb = torch.addcmul(offset.unsqueeze(1), xt, slope.unsqueeze(1))  # (V, M, d)
        slope1 = torch.einsum("vi,vio->vo", slope, g.fc1.weight)  # fc1 folded: (V, d)
        offset1 = torch.einsum("vi,vio->vo", offset, g.fc1.weight) + g.fc1.bias
        h = torch.addcmul(offset1.unsqueeze(1), xt, slope1.unsqueeze(1))  # (V, M, d)
        h = torch.baddbmm(g.fc2.bias.unsqueeze(1), F.elu(h), g.fc2.weight)  # (V, M, d)
        if self.training and g.dropout.p > 0 and x.dim() >= 3:
            # one dropout mask per (variable, sample, channel), shared over the time steps
            # (variational dropout): L times fewer random draws than element-wise dropout,
            # which otherwise costs as much as a layer here
            T = x.shape[-2]
            keep = torch.full((V, h.shape[1] // T, 1, d), 1.0 - g.dropout.p, device=x.device)
            keep = torch.bernoulli(keep) / (1.0 - g.dropout.p)  # (V, M / L, 1, d)
            h = (h.view(V, -1, T, d) * keep).view(V, -1, d)
        else:
            h = g.dropout(h)
        # GLU as two contiguous batched matmuls (see GateAddNorm)
        w_glu, b_glu = g.glu.weight, g.glu.bias.unsqueeze(1)  # (V, d, 2d), (V, 1, 2d)
        value = torch.baddbmm(b_glu[..., :d], h, w_glu[..., :d])  # (V, M, d)
        gate = torch.baddbmm(b_glu[..., d:], h, w_glu[..., d:])  # (V, M, d)
        h = F.layer_norm(torch.addcmul(emb, value, torch.sigmoid(gate)), (d,))  # (V, M, d)
        h = torch.addcmul(g.norm_bias.unsqueeze(1), h, g.norm_weight.unsqueeze(1))  # (V, M, d)

        wt = weights.reshape(-1, V).t().unsqueeze(-1)  # (V, M, 1)
        selected = self.out((h * wt).sum(0))  # (M, hidden)
        return selected.view(*lead, -1), weights


class InterpretableMultiHeadAttention(nn.Module):
    """Multi-head attention with one value projection shared by all heads, heads averaged.

    Because V is shared, averaging the heads' outputs equals applying the head-averaged
    attention matrix to V, so that matrix is an honest picture of what the model looks at.
    """

    def __init__(self, hidden_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.q = nn.Linear(hidden_dim, num_heads * self.head_dim)
        self.k = nn.Linear(hidden_dim, num_heads * self.head_dim)
        self.v = nn.Linear(hidden_dim, self.head_dim)  # shared across heads
        self.out = nn.Linear(self.head_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, causal: bool = True, band: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """``x [B, L, d]`` -> ``(out [B, L, d], attn [B, h, L, L])``.

        ``causal``: step l attends to steps <= l; ``band``: also only to steps > l - band
        (the last ``band`` steps, itself included), which on a window of ``band`` steps
        changes nothing.
        """
        B, L, _ = x.shape
        q = self.q(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, L, dh)
        k = self.k(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, L, dh)
        v = self.v(x)  # (B, L, dh)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, h, L, L)
        if causal:
            future = torch.ones(L, L, dtype=torch.bool, device=x.device).triu(1)
            if band is not None and band < L:
                future |= torch.ones(L, L, dtype=torch.bool, device=x.device).tril(-band)
            scores = scores.masked_fill(future, float("-inf"))
        attn = torch.softmax(scores, dim=-1)  # (B, h, L, L), rows sum to 1 over the past
        mixed = (self.dropout(attn) @ v.unsqueeze(1)).mean(1)  # (B, L, dh)
        return self.out(mixed), attn


def _window_mean(weights: Tensor, window: int) -> Tensor:
    """``[B, C, F] -> [B, C, F]``: at step l, the mean of steps ``l-window+1 .. l`` (fewer at
    the start), i.e. what a window ending at l reports as its variable importance."""
    total = weights.cumsum(1)  # (B, C, F)
    older = F.pad(total, (0, 0, window, 0))[:, : total.shape[1]]  # total shifted by window
    count = torch.arange(1, weights.shape[1] + 1, device=weights.device).clamp(max=window)
    return (total - older) / count[None, :, None].to(weights.dtype)


def _band(attn: Tensor, window: int) -> Tensor:
    """``[B, h, C, C]`` banded attention -> ``[B, C, h, window]``: step l's weights on steps
    ``l-window+1 .. l`` (index -1 = l itself), zero before the chunk start."""
    B, heads, C, _ = attn.shape
    at = torch.arange(C, device=attn.device)
    cols = at[:, None] + torch.arange(-window + 1, 1, device=attn.device)[None, :]  # (C, W)
    picked = attn.gather(-1, cols.clamp(min=0).expand(B, heads, C, window))  # (B, h, C, W)
    picked = picked.masked_fill(cols < 0, 0.0)
    return picked.permute(0, 2, 1, 3)  # (B, C, h, W)


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
        static = torch.stack(
            [self.stock_embedding(stock_id), self.sector_embedding(sector_id)], dim=1
        )  # (B, S, d)
        static, static_weights = self.static_selection(static)  # (B, d), (B, S)
        c_selection = self.context_selection(static).unsqueeze(1)  # (B, 1, d)
        c_enrichment = self.context_enrichment(static).unsqueeze(1)  # (B, 1, d)
        h0 = self.context_h(static).unsqueeze(0).expand(c.lstm_layers, B, -1).contiguous()
        c0 = self.context_c(static).unsqueeze(0).expand(c.lstm_layers, B, -1).contiguous()

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
        h = self.attention_gate(attn_out, enriched)  # (B, L, d)
        h = self.positionwise(h)  # (B, L, d)
        h = self.output_gate(h, temporal)  # (B, L, d)

        pred_all = self.head(h)  # (B, L, H, Q)
        if sequence:
            return {
                "pred": pred_all,  # (B, C, H, Q)
                "pred_all": pred_all,
                "variable_importance": _window_mean(var_weights.detach(), c.lookback),
                "static_importance": static_weights,  # (B, S)
                "attention": _band(attn.detach(), c.lookback),  # (B, C, h, lookback)
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
