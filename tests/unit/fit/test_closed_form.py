"""SPEC §4 identities of the closed-form fit, and the baselines' weightings."""

from __future__ import annotations

import pytest
import torch

from ngc.fit.closed_form import fit_group, truncated_svd
from ngc.fit.whiten import IDENTITY, NumericalError, diagonal, whitening


def anisotropic_inputs(tokens: int, n: int, seed: int = 0) -> torch.Tensor:
    """Activations whose channels differ in scale by three orders of magnitude and are correlated."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(n, n, generator=g, dtype=torch.float64)
    scales = torch.logspace(-1.5, 1.5, n, dtype=torch.float64)
    return (torch.randn(tokens, n, generator=g, dtype=torch.float64) * scales) @ mixing


def output_error(X: torch.Tensor, W: torch.Tensor, W_hat: torch.Tensor) -> float:
    """‖X (W − Ŵ)ᵀ‖_F², the error of the block's outputs on the calibration inputs."""
    return float((X @ (W - W_hat).T).pow(2).sum())


@pytest.mark.parametrize("members", [1, 3])
def test_whitened_truncation_loss_is_the_discarded_spectrum(members):
    g = torch.Generator().manual_seed(1)
    n, k = 24, 7
    X = anisotropic_inputs(200, n)
    weights = [torch.randn(10 + 4 * s, n, generator=g, dtype=torch.float64) for s in range(members)]
    fit = fit_group(weights, k, whitening(X.T @ X))
    error = sum(output_error(X, W, A @ fit.B.T) for W, A in zip(weights, fit.A, strict=True))
    discarded = float(fit.sigma[k:].pow(2).sum())
    assert fit.rank == k and fit.B.shape == (n, k)
    assert error == pytest.approx(discarded, rel=1e-8)
    assert fit.loss == pytest.approx(discarded, rel=1e-12)


def test_svd_llm_beats_plain_svd_on_anisotropic_inputs():
    g = torch.Generator().manual_seed(2)
    n, k = 32, 8
    X = anisotropic_inputs(400, n, seed=3)
    W = torch.randn(20, n, generator=g, dtype=torch.float64)
    plain = fit_group([W], k, IDENTITY)
    whitened = fit_group([W], k, whitening(X.T @ X))
    plain_error = output_error(X, W, plain.A[0] @ plain.B.T)
    whitened_error = output_error(X, W, whitened.A[0] @ whitened.B.T)
    assert whitened_error < 0.5 * plain_error
    # and plain SVD is the optimum of the unweighted error, as Eckart-Young says
    assert float((W - plain.A[0] @ plain.B.T).pow(2).sum()) <= float((W - whitened.A[0] @ whitened.B.T).pow(2).sum())


def test_diagonal_transform_folds_back_into_the_basis():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(12, 9, generator=g, dtype=torch.float64)
    scales = torch.rand(9, generator=g, dtype=torch.float64) + 0.1
    fit = fit_group([W], 9, diagonal(scales))  # full rank: exact
    assert torch.allclose(fit.A[0] @ fit.B.T, W, atol=1e-10)


def test_truncated_svd_matches_torch_svd_on_both_orientations():
    g = torch.Generator().manual_seed(5)
    for shape in ((30, 12), (12, 30)):
        X = torch.randn(*shape, generator=g, dtype=torch.float64)
        US, V, sigma = truncated_svd(X, 5)
        reference = torch.linalg.svdvals(X)
        assert torch.allclose(sigma[: reference.numel()], reference, rtol=1e-8)
        U, S, Vh = torch.linalg.svd(X, full_matrices=False)
        assert torch.allclose(US @ V.T, (U[:, :5] * S[:5]) @ Vh[:5], atol=1e-9)


def test_singular_covariance_gets_a_reported_ridge():
    X = anisotropic_inputs(5, 16)  # 5 tokens for 16 channels: rank 5
    transform = whitening(X.T @ X, "L0:down")
    assert transform.ridge > 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_statistics_are_refused(bad):
    C = torch.eye(4, dtype=torch.float64)
    C[1, 2] = bad
    with pytest.raises(NumericalError, match="NaN or Inf"):
        whitening(C, "L3:q+k+v")


def test_non_finite_weights_are_refused():
    W = torch.ones(3, 4, dtype=torch.float64)
    W[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="NaN or Inf"):
        fit_group([W], 1, IDENTITY)
