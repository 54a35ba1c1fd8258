"""The input observer's statistics, and how smoothing rescales them."""

import torch

from accel.quantization.calibration import InputObserver, scale_stats


def test_observer_accumulates_hessian_and_channel_norms_over_every_token():
    x = torch.randn(3, 50, 16, dtype=torch.float32) * torch.linspace(0.1, 4, 16)
    observer = InputObserver(16, hessian=True, max_rows=20, expected_batches=3)
    for batch in x:
        observer.update(batch)
    stats = observer.stats()
    rows = x.reshape(-1, 16).double()
    torch.testing.assert_close(stats.channel_norms.double(), rows.norm(dim=0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats.hessian.double(), rows.T @ rows / 150, rtol=1e-5, atol=1e-5)
    assert stats.num_tokens == 150 and len(stats.inputs) <= 21


def test_scale_stats_divides_channel_norms_by_s():
    observer = InputObserver(4, hessian=False, max_rows=8, expected_batches=1)
    observer.update(torch.randn(10, 4))
    s = torch.tensor([1.0, 2.0, 4.0, 0.5])
    stats = observer.stats()
    torch.testing.assert_close(scale_stats(stats, s).channel_norms, stats.channel_norms / s)
