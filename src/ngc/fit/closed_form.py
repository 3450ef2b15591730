"""The closed-form group fit (SPEC §4): rank-k truncation of the transformed stack of member weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ngc.fit.whiten import NumericalError, Transform


@dataclass(frozen=True)
class GroupFit:
    """``W_s ≈ A_s Bᵀ`` for every member s, and the spectrum of the transformed stack."""

    A: tuple[torch.Tensor, ...]  # per member, (m_s, k) float64
    B: torch.Tensor  # (n, k) float64
    sigma: torch.Tensor  # all singular values of W_stack S, descending
    ridge: float
    # how C was factorised (whitening only): "cholesky" or "eigh", its condition, eigenvalues floored (whiten.py)
    factorisation: str | None = None
    condition: float | None = None
    floored: int = 0

    @property
    def rank(self) -> int:
        return int(self.B.shape[1])

    @property
    def loss(self) -> float:
        """Truncation loss in the transformed metric: ``Σ_{i>k} σ_i²``."""
        return float(self.sigma[self.rank :].pow(2).sum())

    @property
    def relative_loss(self) -> float:
        """Loss over ``‖W_stack S‖_F²`` (SPEC §4's normalised loss)."""
        total = float(self.sigma.pow(2).sum())
        return self.loss / total if total > 0 else 0.0


def truncated_svd(X: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U_k Σ_k, V_k, σ)`` of ``X`` (M, n) float64, from the eigendecomposition of the smaller Gram matrix.

    Three times faster than a full SVD on CPU; the top singular triplets are what the fit keeps, and the tail
    ``σ_i²`` (the loss) comes out as eigenvalues, accurate to ``1e-16 ‖X‖²``.
    """
    if X.shape[0] >= X.shape[1]:
        eigenvalues, V = torch.linalg.eigh(X.T @ X)  # ascending, (n,), (n, n)
        V_k = V[:, -k:].flip(1)  # (n, k)
        US = X @ V_k  # (M, k) = U_k Σ_k
    else:
        eigenvalues, U = torch.linalg.eigh(X @ X.T)  # (M,), (M, M)
        U_k = U[:, -k:].flip(1)  # (M, k)
        top = eigenvalues[-k:].flip(0).clamp_min(0).sqrt()  # (k,)
        V_k = (X.T @ U_k) / top.clamp_min(torch.finfo(X.dtype).tiny)  # (n, k)
        US = U_k * top
    sigma = eigenvalues.flip(0).clamp_min(0).sqrt()
    return US, V_k, sigma


def stack(weights: Sequence[torch.Tensor], device: torch.device | None = None) -> torch.Tensor:
    """Members' weights stacked along the output, float64 (M, n), on ``device`` (default: the first weight's)."""
    device = device if device is not None else weights[0].device
    W = torch.cat([w.detach().to(device=device, dtype=torch.float64) for w in weights], dim=0)
    if not torch.isfinite(W).all():
        raise NumericalError("a weight to be compressed contains NaN or Inf", hint="check the model's checkpoint")
    return W


def spectrum(weights: Sequence[torch.Tensor], transform: Transform) -> torch.Tensor:
    """Singular values of ``W_stack S``, descending (what rank allocation needs; cheaper than a fit)."""
    X = transform.apply(stack(weights, transform.device))
    gram = X.T @ X if X.shape[0] >= X.shape[1] else X @ X.T
    return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()


def fit_group(weights: Sequence[torch.Tensor], rank: int, transform: Transform) -> GroupFit:
    """Fit members ``weights`` (each (m_s, n)) with one shared basis of ``rank`` columns.

    ``SVD(W_stack S) = U Σ Vᵀ``; ``A = U_k Σ_k`` sliced per member; ``B = S⁻ᵀ V_k``.
    """
    W = stack(weights, transform.device)  # (M, n), where the statistics are
    if not 1 <= rank <= min(W.shape):
        raise ValueError(f"rank {rank} outside [1, {min(W.shape)}]")
    A, V_k, sigma = truncated_svd(transform.apply(W), rank)  # (M, k), (n, k)
    B = transform.unapply_basis(V_k)  # (n, k)
    sizes = [int(w.shape[0]) for w in weights]
    whitened = transform.factor is not None and transform.factor.dim() == 2
    return GroupFit(
        tuple(A.split(sizes, dim=0)),
        B,
        sigma,
        transform.ridge,
        transform.factorisation if whitened else None,
        transform.condition if whitened else None,
        transform.floored,
    )
