from statistics import NormalDist

import torch

from relcast.models.temporal.losses import QuantileHead


def test_quantile_head_starts_at_normal_quantiles_of_the_target_scale():
    q = (0.1, 0.25, 0.5, 0.75, 0.9)
    head = QuantileHead(4, horizons=2, quantiles=q)
    torch.nn.init.zeros_(head.proj.weight)
    torch.nn.init.zeros_(head.proj.bias.view(2, 5)[:, 2])  # median at 0
    out = head(torch.randn(3, 4))  # (3, H, Q)
    expected = torch.tensor([NormalDist().inv_cdf(x) for x in q])
    torch.testing.assert_close(out[0, 0], expected, atol=1e-5, rtol=0)
    head.init_interval(0.02)  # raw daily returns
    torch.testing.assert_close(head(torch.randn(3, 4))[0, 1], 0.02 * expected, atol=1e-6, rtol=0)
