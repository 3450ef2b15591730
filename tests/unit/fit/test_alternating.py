"""Alternating solves lower the exact objective of a cross-layer group (SPEC §4)."""

from __future__ import annotations

import torch

from ngc.fit.alternating import alternate, exact_loss
from ngc.fit.closed_form import fit_group
from ngc.fit.whiten import whitening
from tests.unit.fit.test_closed_form import anisotropic_inputs


def test_alternating_lowers_the_exact_loss_monotonically():
    g = torch.Generator().manual_seed(0)
    n, k = 16, 5
    inputs = [anisotropic_inputs(200, n, seed=1), anisotropic_inputs(200, n, seed=2) * 3]
    covariances = [X.T @ X for X in inputs]
    weights = [torch.randn(12, n, generator=g, dtype=torch.float64) for _ in inputs]
    pooled = fit_group(weights, k, whitening(sum(covariances)))
    A, B, losses = alternate(weights, pooled.A, pooled.B, covariances, rounds=6)
    assert losses[0] == exact_loss(weights, pooled.A, pooled.B, covariances)
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 0.97 * losses[0]
    assert exact_loss(weights, A, B, covariances) == losses[-1]


def test_nothing_to_gain_when_members_share_one_input():
    g = torch.Generator().manual_seed(3)
    n, k = 12, 4
    C = (lambda X: X.T @ X)(anisotropic_inputs(100, n, seed=4))
    weights = [torch.randn(8, n, generator=g, dtype=torch.float64) for _ in range(2)]
    fit = fit_group(weights, k, whitening(C))
    _A, _B, losses = alternate(weights, fit.A, fit.B, [C, C], rounds=3)
    assert abs(losses[-1] - losses[0]) <= 1e-7 * losses[0]
    assert abs(losses[0] - fit.loss) <= 1e-7 * losses[0]  # the pooled optimum is the exact optimum here
