"""The exact objective of a group whose members read different inputs (SPEC §4):

    min over A_s, B of  Σ_s ‖(W_s − A_s Bᵀ) L_s‖_F² = Σ_s tr((W_s − A_s Bᵀ) C_s (W_s − A_s Bᵀ)ᵀ)

The pooled closed form is exact when all members read one input; across layers it is a start point.
Alternating closed-form solves lower the exact objective monotonically:
- A step: ``A_s = W_s C_s B (Bᵀ C_s B)⁻¹`` for each member;
- B step: ``Σ_s C_s B (A_sᵀ A_s) = Σ_s C_s W_sᵀ A_s``, a symmetric positive definite system in B, solved by
  conjugate gradients warm-started from the current B.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def exact_loss(
    weights: Sequence[torch.Tensor], A: Sequence[torch.Tensor], B: torch.Tensor, covariances: Sequence[torch.Tensor]
) -> float:
    """``Σ_s tr((W_s − A_s Bᵀ) C_s (W_s − A_s Bᵀ)ᵀ)``."""
    total = 0.0
    for W, A_s, C in zip(weights, A, covariances, strict=True):
        E = W - A_s @ B.T  # (m_s, n)
        total += float(((E @ C) * E).sum())
    return total


def _solve_b(
    A: Sequence[torch.Tensor], covariances: Sequence[torch.Tensor], rhs: torch.Tensor, B0: torch.Tensor, iterations: int
) -> torch.Tensor:
    grams = [A_s.T @ A_s for A_s in A]  # (k, k)

    def operator(B: torch.Tensor) -> torch.Tensor:
        return sum(C @ B @ G for C, G in zip(covariances, grams, strict=True))

    B = B0.clone()
    residual = rhs - operator(B)
    direction = residual.clone()
    rs = float((residual * residual).sum())
    tolerance = 1e-20 * float((rhs * rhs).sum())
    for _ in range(iterations):
        if rs <= tolerance:
            break
        image = operator(direction)
        step = rs / float((direction * image).sum())
        B += step * direction
        residual -= step * image
        rs_new = float((residual * residual).sum())
        direction = residual + (rs_new / rs) * direction
        rs = rs_new
    return B


def alternate(
    weights: Sequence[torch.Tensor],
    A: Sequence[torch.Tensor],
    B: torch.Tensor,
    covariances: Sequence[torch.Tensor],
    rounds: int = 4,
    cg_iterations: int = 50,
) -> tuple[list[torch.Tensor], torch.Tensor, list[float]]:
    """Refine a group's factors on the exact objective; returns new ``A``, ``B`` and the loss after each round.

    All tensors float64: ``weights[s]`` (m_s, n), ``A[s]`` (m_s, k), ``B`` (n, k), ``covariances[s]`` (n, n).
    """
    A = [a.clone() for a in A]
    B = B.clone()
    losses = [exact_loss(weights, A, B, covariances)]
    eye = torch.eye(B.shape[1], dtype=B.dtype, device=B.device)
    for _ in range(rounds):
        for s, (W, C) in enumerate(zip(weights, covariances, strict=True)):
            CB = C @ B  # (n, k)
            gram = B.T @ CB + 1e-12 * float(torch.trace(B.T @ CB)) * eye
            A[s] = torch.linalg.solve(gram, (W @ CB).T).T
        rhs = sum(C @ W.T @ A_s for W, A_s, C in zip(weights, A, covariances, strict=True))
        B = _solve_b(A, covariances, rhs, B, cg_iterations)
        losses.append(exact_loss(weights, A, B, covariances))
    return A, B, losses
