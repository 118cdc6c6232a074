"""sample_beta: exact Beta draws from a generator, batched, with public torch ops only."""

from __future__ import annotations

import pytest
import torch

from salaug.transforms.base import sample_beta

CPU = torch.device("cpu")


def ks_distance(x: torch.Tensor, alpha: float, beta: float) -> float:
    """Largest gap between the empirical and the Beta CDF on a grid inside (0, 1).

    The grid keeps clear of the last float32 step below 1, where draws round to exactly 1.0.
    """
    stats = pytest.importorskip("scipy.stats")
    grid = torch.linspace(1e-3, 1 - 1e-3, 999, dtype=torch.float64)
    empirical = (x.double().unsqueeze(0) <= grid.unsqueeze(1)).double().mean(1)
    exact = torch.from_numpy(stats.beta(alpha, beta).cdf(grid.numpy()))
    return float((empirical - exact).abs().max())


@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (5.0, 5.0), (0.2, 0.2), (0.5, 2.0), (30.0, 2.0)])
def test_beta_draws_follow_the_beta_distribution(alpha, beta):
    n = 20000
    x = sample_beta(alpha, beta, (n,), CPU, torch.Generator().manual_seed(1))
    assert x.dtype == torch.float32 and x.shape == (n,)
    assert ks_distance(x, alpha, beta) < 1.95 / n**0.5  # Kolmogorov's 0.1 % critical value
    mean, var = alpha / (alpha + beta), alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
    x = x.double()
    assert abs(float(x.mean()) - mean) < 5 * (var / n) ** 0.5
    assert abs(float(x.var()) / var - 1) < 0.05


def test_the_ks_check_can_fail():
    n = 20000
    x = sample_beta(2.0, 2.0, (n,), CPU, torch.Generator().manual_seed(1))
    assert ks_distance(x, 2.5, 2.0) > 3 * 1.95 / n**0.5


def test_reproducible_from_the_generator_and_batched_shapes():
    a = sample_beta(1.0, 1.0, (4, 2), CPU, torch.Generator().manual_seed(7))
    b = sample_beta(1.0, 1.0, (4, 2), CPU, torch.Generator().manual_seed(7))
    c = sample_beta(1.0, 1.0, (4, 2), CPU, torch.Generator().manual_seed(8))
    assert a.shape == (4, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_tiny_concentrations_stay_finite():
    x = sample_beta(0.01, 0.01, (5000,), CPU, torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(x).all()) and bool((x >= 0).all()) and bool((x <= 1).all())
    assert 0.4 < float((x > 0.5).float().mean()) < 0.6  # U-shaped, symmetric


def test_no_private_torch_sampler():
    import inspect

    import salaug.transforms.base as base

    assert "torch._" not in inspect.getsource(base)
