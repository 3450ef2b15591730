"""The sequential update's target (SPEC §4)."""

from __future__ import annotations

import torch

from ngc.calib.moments import InputMoments
from ngc.fit.closed_form import fit_group
from ngc.fit.sequential import sequential_target
from ngc.fit.whiten import whitening


def paired_moments(X_tilde: torch.Tensor, X: torch.Tensor) -> InputMoments:
    moments = InputMoments(X.shape[1])
    moments.add_pair(X_tilde, X)
    return moments


def test_target_is_the_weight_itself_when_the_prefix_is_exact():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(100, 8, generator=g, dtype=torch.float64)
    W = torch.randn(5, 8, generator=g, dtype=torch.float64)
    assert torch.allclose(sequential_target(W, paired_moments(X, X)), W, atol=1e-9)


def test_rank_k_fit_of_the_target_minimises_the_sequential_objective():
    g = torch.Generator().manual_seed(1)
    n, k = 10, 4
    X = torch.randn(300, n, generator=g, dtype=torch.float64)
    X_tilde = X + 0.3 * torch.randn(300, n, generator=g, dtype=torch.float64)  # what a lossy prefix feeds
    W = torch.randn(7, n, generator=g, dtype=torch.float64)
    moments = paired_moments(X_tilde, X)
    target = sequential_target(W, moments)
    # unconstrained: the least-squares solution of X̃ Ŵᵀ = X Wᵀ
    assert torch.allclose(target, torch.linalg.lstsq(X_tilde, X @ W.T).solution.T, atol=1e-8)

    def objective(W_hat: torch.Tensor) -> float:
        return float((X_tilde @ W_hat.T - X @ W.T).pow(2).sum())

    sequential = fit_group([target], k, whitening(moments.second))
    plain = fit_group([W], k, whitening(X_tilde.T @ X_tilde))  # ignores that x̃ differs from x
    best = objective(sequential.A[0] @ sequential.B.T)
    assert best < objective(plain.A[0] @ plain.B.T)
    # optimality: the loss identity holds up to the constant part
    constant = objective(target)
    assert abs(best - constant - sequential.loss) <= 1e-8 * best


def test_shrink_moves_the_target_towards_the_weight():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(200, 6, generator=g, dtype=torch.float64)
    X_tilde = X + 0.5 * torch.randn(200, 6, generator=g, dtype=torch.float64)
    W = torch.randn(4, 6, generator=g, dtype=torch.float64)
    moments = paired_moments(X_tilde, X)
    distances = [float((sequential_target(W, moments, shrink=s) - W).norm()) for s in (0.0, 0.1, 10.0, 1e6)]
    assert distances == sorted(distances, reverse=True) and distances[-1] < 1e-4


def test_singular_prefix_gives_the_exact_target_nearest_the_weight():
    """X̃ spans 5 of 8 directions (as a GQA attention output does): the target is exact on that span, keeps W
    on the rest (no 1/λ of rounding-level eigenvalues), and matches the λ → 0 limit of the shrunk target."""
    g = torch.Generator().manual_seed(7)
    n, r = 8, 5
    basis = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    span, null = basis[:, :r], basis[:, r:]
    X = torch.randn(200, n, generator=g, dtype=torch.float64)
    X_tilde = (X + 0.3 * torch.randn(200, n, generator=g, dtype=torch.float64)) @ span @ span.T  # rank r
    W = torch.randn(6, n, generator=g, dtype=torch.float64)
    moments = paired_moments(X_tilde, X)
    target = sequential_target(W, moments, "L0.o")
    exact = torch.linalg.lstsq(X_tilde @ span, X @ W.T).solution.T  # least squares on the span: (6, r)
    torch.testing.assert_close(target @ span, exact, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(target @ null, W @ null, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(target, sequential_target(W, moments, shrink=1e-9), rtol=1e-5, atol=1e-6)
    assert float(target.abs().max()) < 10 * float(exact.abs().max() + W.abs().max())
