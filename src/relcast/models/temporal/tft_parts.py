"""The named parts of the Temporal Fusion Transformer (:mod:`relcast.models.temporal.tft`), as
in the paper and pytorch-forecasting: the gated residual network (GRN) and its gate, variable
selection, and interpretable multi-head attention, plus the two helpers that turn a sequence
batch's weights into what a window would report (:func:`window_mean`, :func:`banded_attention`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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

    def step(
        self, x: Tensor, keys: Tensor, values: Tensor, seen: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One causal step: ``x [R, 1, d]`` attends to itself and the ``W`` earlier steps of
        its window, whose projections ``keys [R, W, heads * dh]`` and ``values [R, W, dh]``
        are given (oldest first; only the last ``seen [R]`` of them are real, the chunk
        started after the others). Returns ``(out [R, 1, d], keys, values)``, the window
        moved on by one step. The numbers of :meth:`forward` with ``band = W + 1`` at that
        step."""
        R, W = keys.shape[:2]
        h, dh = self.num_heads, self.head_dim
        keys = torch.cat([keys, self.k(x)], dim=1)  # (R, W + 1, h * dh)
        values = torch.cat([values, self.v(x)], dim=1)  # (R, W + 1, dh)
        q = self.q(x).view(R, 1, h, dh).transpose(1, 2)  # (R, h, 1, dh)
        k = keys.view(R, W + 1, h, dh).transpose(1, 2)  # (R, h, W + 1, dh)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)  # (R, h, 1, W + 1)
        empty = torch.arange(W + 1, device=x.device)[None, :] < (W - seen)[:, None]  # (R, W+1)
        scores = scores.masked_fill(empty[:, None, None, :], float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        mixed = (attn @ values.unsqueeze(1)).mean(1)  # (R, 1, dh)
        return self.out(mixed), keys[:, 1:], values[:, 1:]


def window_mean(weights: Tensor, window: int) -> Tensor:
    """``[B, C, F] -> [B, C, F]``: at step l, the mean of steps ``l-window+1 .. l`` (fewer at
    the start), i.e. what a window ending at l reports as its variable importance."""
    total = weights.cumsum(1)  # (B, C, F)
    older = F.pad(total, (0, 0, window, 0))[:, : total.shape[1]]  # total shifted by window
    count = torch.arange(1, weights.shape[1] + 1, device=weights.device).clamp(max=window)
    return (total - older) / count[None, :, None].to(weights.dtype)


def banded_attention(attn: Tensor, window: int) -> Tensor:
    """``[B, h, C, C]`` banded attention -> ``[B, C, h, window]``: step l's weights on steps
    ``l-window+1 .. l`` (index -1 = l itself), zero before the chunk start."""
    B, heads, C, _ = attn.shape
    at = torch.arange(C, device=attn.device)
    cols = at[:, None] + torch.arange(-window + 1, 1, device=attn.device)[None, :]  # (C, W)
    picked = attn.gather(-1, cols.clamp(min=0).expand(B, heads, C, window))  # (B, h, C, W)
    picked = picked.masked_fill(cols < 0, 0.0)
    return picked.permute(0, 2, 1, 3)  # (B, C, h, W)
