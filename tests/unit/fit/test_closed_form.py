"""SPEC §4 identities of the closed-form fit, and the baselines' weightings."""

from __future__ import annotations

import pytest
import torch

from ngc.fit.closed_form import fit_group, truncated_svd
from ngc.fit.whiten import IDENTITY, NumericalError, Transform, diagonal, eigen_whitening, whitening


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


def _spectrum_covariance(n: int, eigenvalues: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``C = Q diag(eigenvalues) Qᵀ`` with a seeded random orthogonal Q; returns (C, Q)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (Q * eigenvalues) @ Q.T, Q


def test_well_conditioned_whitening_is_the_plain_cholesky_factor_bit_for_bit():
    X = anisotropic_inputs(200, 16)
    C = X.T @ X
    transform = whitening(C)
    assert transform.factorisation == "cholesky" and transform.ridge == 0.0
    assert torch.equal(transform.factor, torch.linalg.cholesky(C))
    L = torch.linalg.cholesky(C)
    scale = float(C.diagonal().max())
    # min(pivot², estimated λ_min) / max C_ii: the estimate approaches λ_min from above
    assert float(torch.linalg.eigvalsh(C)[0]) / scale <= transform.condition * (1 + 1e-9)
    assert transform.condition <= float(L.diagonal().square().min()) / scale * (1 + 1e-12)


def test_near_zero_pivots_fall_back_to_a_floored_eigendecomposition():
    n, k = 24, 22  # k past the 21 informative directions: the basis must reach into the near-null space
    eigenvalues = torch.logspace(0, -3, n, dtype=torch.float64)
    eigenvalues[-3:] = 1e-16  # numerically singular, yet Cholesky "succeeds" with rounding-noise pivots
    C, Q = _spectrum_covariance(n, eigenvalues, seed=39)
    plain = torch.linalg.cholesky_ex(C)
    assert int(plain.info) == 0  # what was accepted before: a factor with rounding-noise pivots
    transform = whitening(C, "L0:q")
    assert transform.factorisation == "eigh"
    assert transform.condition < n * torch.finfo(torch.float64).eps
    assert transform.floored == 3
    W = torch.randn(30, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    fit = fit_group([W], k, transform)
    # independent reference: the same fit under the floored covariance, through its own Cholesky factor
    floored = (Q * eigenvalues.clamp_min(1e-10 * float(eigenvalues.max()))) @ Q.T
    reference = fit_group([W], k, Transform(torch.linalg.cholesky(floored)))
    # both reach the optimum of the floored metric; entries of A Bᵀ along the floored directions (of order 1e4
    # here) are rounding-sensitive and differ between LAPACK builds, so the fits are compared in that metric
    S = Q * eigenvalues.clamp_min(1e-10 * float(eigenvalues.max())).sqrt()  # exact factor of the floored C

    def loss(f) -> float:
        return float(((W - f.A[0] @ f.B.T) @ S).pow(2).sum())

    optimum = float(torch.linalg.svdvals(W @ S)[k:].pow(2).sum())
    assert loss(fit) == pytest.approx(optimum, rel=1e-6) and loss(reference) == pytest.approx(optimum, rel=1e-6)
    before = fit_group([W], k, Transform(plain.L))  # the factor accepted before: B of order 1/pivot ~ 5e7
    assert float(fit.B.abs().max()) < 1e5 < float(before.B.abs().max())


def test_solve_covariance_inverts_c_for_both_factorisations():
    n = 12
    Y = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    well, _ = _spectrum_covariance(n, torch.linspace(1.0, 2.0, n, dtype=torch.float64), seed=1)
    assert torch.allclose(whitening(well).solve_covariance(Y), torch.linalg.solve(well, Y), atol=1e-12)
    eigenvalues = torch.linspace(1.0, 2.0, n, dtype=torch.float64)
    eigenvalues[0] = 1e-19
    bad, Q = _spectrum_covariance(n, eigenvalues, seed=2)
    transform = eigen_whitening(bad)  # (whether the Cholesky pivots flag this C depends on the LAPACK build)
    assert transform.factorisation == "eigh" and transform.floored == 1
    floored = (Q * eigenvalues.clamp_min(2e-10)) @ Q.T
    assert torch.allclose(transform.solve_covariance(Y), torch.linalg.solve(floored, Y), rtol=1e-6)


def test_whitening_keeps_the_dtype_and_device_of_c():
    X = anisotropic_inputs(100, 8).to(torch.float32)
    transform = whitening(X.T @ X)
    assert transform.factor.dtype == torch.float32 and transform.factor.device == X.device
    eigenvalues = torch.linspace(1.0, 2.0, 8, dtype=torch.float64)
    eigenvalues[0] = 1e-19
    bad, _ = _spectrum_covariance(8, eigenvalues, seed=4)
    fallback = whitening(bad.to(torch.float32))
    assert fallback.factor.dtype == torch.float32


def test_a_near_singular_covariance_with_healthy_pivots_still_falls_back():
    # eigenvalues 1 ... 0.1 and one at 1e-17 in random directions: the Cholesky factor exists and its smallest
    # pivot² (5e-14 of max C_ii) passes the n·eps test, but λ_min / λ_max is 1e-17; inverse power steps find it
    n = 64
    eigenvalues = torch.logspace(0, -1, n, dtype=torch.float64)
    eigenvalues[-1] = 1e-17
    C, _ = _spectrum_covariance(n, eigenvalues, seed=0)
    C = (C + C.T) / 2
    L, info = torch.linalg.cholesky_ex(C)
    noise = n * torch.finfo(torch.float64).eps
    if int(info) != 0:
        pytest.skip("this LAPACK build refuses C outright (the ridge path handles it); the premise needs a factor")
    assert float(L.diagonal().square().min() / C.diagonal().max()) > noise  # the pivots alone would pass
    transform = whitening(C)
    assert transform.factorisation == "eigh"
    assert transform.condition < 1e-15
    assert transform.floored >= 1
