"""A stacked GRU for the CPU with a hand-written backward pass (same weights as ``nn.GRU``).

Why: PyTorch runs ``nn.GRU`` on the CPU step by step, recording about a dozen small operators
per step and layer for autograd and replaying some twenty-five in the backward pass (there is
no fused oneDNN kernel for the GRU as there is for the LSTM). On a sequence batch (15 chunks
of 128 steps at the default sizes) the tensors are tiny and that per-operator overhead is the
cost: profiling the medium benchmark, the model's forward + backward took 92% of a training
step (gather 1%, loss 5%, AdamW 3%), almost all of it in the recurrence's per-step operators.

Here the input projections of all steps are one matrix product (ordinary autograd), and the
recurrence is one :class:`torch.autograd.Function` per layer whose forward loop issues 7
operators per step and whose backward loop 3: everything that does not depend on the running
gradient (the gate derivatives) is computed for all steps at once before the loop, and the
weight gradient ``dW_hh`` is one product over all steps after it. The equations are
``nn.GRU``'s (gates in its order r, z, n):

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h = n + z * (h - n)

That halves the time of a GRU training step on chunks. On large batches (windowed training,
1,024 windows) the step is compute-bound and the all-steps tensors fall out of cache, so
``nn.GRU`` is faster there; the model picks this path for small CPU batches only
(:data:`relcast.models.temporal.lstm.SMALL_BATCH`).

The parameters stay those of an ``nn.GRU`` module (same state dict, same initialisation), the
state starts at zero, and dropout between layers is applied as ``nn.GRU`` does (training
only, not after the last layer). Outputs equal ``nn.GRU``'s to float rounding
(``tests/test_sequence.py`` checks values and gradients, and ``gradcheck`` the backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["GRURecurrence", "gru_forward"]


class GRURecurrence(torch.autograd.Function):
    """One GRU layer's recurrence from a zero state: ``gi [C, B, 3d]`` (input projections,
    ``b_ih`` included, time-major) -> ``h [C, B, d]``, the hidden state after every step.

    Per-step views are made once with ``unbind`` (indexing a tensor in the loop costs as much
    as the arithmetic at these sizes)."""

    @staticmethod
    def forward(ctx, gi: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
        C, B, three_d = gi.shape
        d = three_d // 3
        pre_rz = gi[..., : 2 * d] + b_hh[: 2 * d]  # (C, B, 2d) r, z: input part + both biases
        h_all = gi.new_zeros(C + 1, B, d)  # h_all[t] = state before step t
        rz_all = gi.new_empty(C, B, 2 * d)  # r, z after the sigmoid
        ghn_all = gi.new_empty(C, B, d)  # W_hn h + b_hn
        n_all = gi.new_empty(C, B, d)  # n after the tanh
        w_rz, w_n, b_n = w_hh[: 2 * d].t(), w_hh[2 * d :].t(), b_hh[2 * d :]
        h, p_rz, gi_n = h_all.unbind(0), pre_rz.unbind(0), gi[..., 2 * d :].unbind(0)
        rz, ghn, n = rz_all.unbind(0), ghn_all.unbind(0), n_all.unbind(0)
        r, z = rz_all[..., :d].unbind(0), rz_all[..., d:].unbind(0)
        for t in range(C):
            torch.addmm(p_rz[t], h[t], w_rz, out=rz[t]).sigmoid_()  # (B, 2d) r, z
            torch.addmm(b_n, h[t], w_n, out=ghn[t])  # (B, d)
            torch.addcmul(gi_n[t], r[t], ghn[t], out=n[t]).tanh_()  # n
            torch.addcmul(n[t], z[t], h[t] - n[t], out=h[t + 1])  # n + z (h - n)
        ctx.save_for_backward(h_all, ghn_all, rz_all, n_all, w_hh)
        return h_all[1:]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        h_all, ghn_all, rz_all, n_all, w_hh = ctx.saved_tensors
        C, B, d = n_all.shape
        r, z, n = rz_all[..., :d], rz_all[..., d:], n_all
        # what does not depend on the running gradient dh, for all steps at once: the
        # derivatives of the three pre-activations of W_hh h + b_hh (r, z, n) by h'
        a_n = (1 - z) * (1 - n * n)  # (C, B, d) d pre-act(n) / d h'
        factors = n_all.new_empty(C, B, 3, d)
        torch.mul(a_n * ghn_all, r * (1 - r), out=factors[:, :, 0])
        torch.mul(h_all[:-1] - n, z * (1 - z), out=factors[:, :, 1])
        torch.mul(a_n, r, out=factors[:, :, 2])
        grad_out = grad_out.contiguous()
        dh_all = torch.empty_like(n_all)  # dh_all[t]: gradient of the state after step t
        dh_all[C - 1] = grad_out[C - 1]
        d_gh = n_all.new_empty(C, B, 3 * d)  # gradient of W_hh h + b_hh
        dh, g_out, fac, z_t = dh_all.unbind(0), grad_out.unbind(0), factors.unbind(0), z.unbind(0)
        d_gh_t, d_gh3 = d_gh.unbind(0), d_gh.view(C, B, 3, d).unbind(0)
        for t in range(C - 1, -1, -1):
            torch.mul(dh[t].unsqueeze(1), fac[t], out=d_gh3[t])  # (B, 3, d) r, z, n parts
            if t:  # dh' = dout + dh z + d_gh W_hh
                prev = torch.addcmul(g_out[t - 1], dh[t], z_t[t])
                torch.addmm(prev, d_gh_t[t], w_hh, out=dh[t - 1])
        d_gi = torch.empty_like(d_gh)  # (C, B, 3d) gradient of the input projections
        d_gi[..., : 2 * d] = d_gh[..., : 2 * d]
        torch.mul(dh_all, a_n, out=d_gi[..., 2 * d :])
        flat = d_gh.view(C * B, 3 * d)
        d_w = flat.t() @ h_all[:-1].reshape(C * B, d)  # (3d, d)
        return d_gi, d_w, flat.sum(0)


def gru_forward(rnn: nn.GRU, x: Tensor) -> Tensor:
    """``rnn(x)[0]`` for a batch-first, unidirectional ``nn.GRU`` from a zero state:
    ``x [B, C, F] -> [B, C, d]``, through :class:`GRURecurrence` (the CPU fast path)."""
    if rnn.bidirectional or not rnn.batch_first:
        raise ValueError("gru_forward takes a batch-first, unidirectional nn.GRU")
    h = x.transpose(0, 1)  # (C, B, F) time-major: each step's rows are contiguous
    for k in range(rnn.num_layers):
        if k and rnn.dropout and rnn.training:
            h = F.dropout(h, rnn.dropout, training=True)
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
        if rnn.bias:
            b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
        else:
            b_ih, b_hh = None, w_hh.new_zeros(w_hh.shape[0])
        gi = F.linear(h, w_ih, b_ih).contiguous()  # (C, B, 3d), all steps in one product
        h = GRURecurrence.apply(gi, w_hh, b_hh)  # (C, B, d)
    return h.transpose(0, 1)  # (B, C, d)
