"""The sequential update's target (SPEC §4): fit on what the compressed prefix feeds a block.

With ``x̃`` the input from the already-compressed layers and ``x`` the dense input, the block should give
``Ŵ x̃ ≈ W x``. Over calibration tokens, ``‖X̃ Ŵᵀ − X Wᵀ‖²`` is minimised without a rank limit by
``Ŵ* = W Mᵀ C̃⁻¹`` (``M = X̃ᵀX``, ``C̃ = X̃ᵀX̃``), and for any Ŵ it equals ``‖(Ŵ − Ŵ*) L̃‖² + const``
(``C̃ = L̃ L̃ᵀ``). So the rank-k fit is the whitened truncation of ``Ŵ*`` under ``C̃``: the closed form of §4
applied to target ``Ŵ*`` and moments ``C̃``.

When ``C̃`` is singular (directions the compressed prefix never excites: a GQA model's attention output, a dead
channel), every ``Ŵ*`` that agrees on the range of ``C̃`` is exact, and ``C̃⁻¹`` of a rounding-level eigenvalue
turns float noise into huge weights (and, through ``B = S⁻ᵀ V``, into a float32 forward that no longer equals
``A Bᵀ x``). Of the exact minimisers the target is then the one closest to ``W``:
``Ŵ* = W + W (Mᵀ − C̃) C̃⁺``, with ``C̃⁺`` the pseudo-inverse over eigenvalues above ``EIGEN_FLOOR·λ_max``; it
keeps ``W`` itself where ``C̃`` has no energy (the λ → 0 limit of the shrunk target below).
"""

from __future__ import annotations

import torch

from ngc.calib.moments import InputMoments
from ngc.fit.whiten import EIGEN_FLOOR, whitening


def sequential_target(W: torch.Tensor, moments: InputMoments, what: str = "input", shrink: float = 0.0) -> torch.Tensor:
    """``Ŵ* = W Mᵀ C̃⁻¹`` for ``W`` (m, n), float64; with ``shrink`` λ > 0 the ridge-regularised
    ``W (Mᵀ + λ s I)(C̃ + λ s I)⁻¹`` (s = mean diag C̃), which moves from the full correction (λ = 0) towards W
    itself (λ → ∞) and damps the directions where C̃ is small and its inverse amplifies calibration noise."""
    if moments.cross is None:
        raise ValueError("sequential moments need the cross moment M")
    C, M = moments.second, moments.cross
    if shrink > 0:
        bump = shrink * float(C.diagonal().mean())
        C, M = C.clone(), M.clone()  # + bump·I, without building I
        C.diagonal().add_(bump)
        M.diagonal().add_(bump)
    transform = whitening(C, what)  # C̃ (+ ridge) = S Sᵀ (Cholesky, or eigh when C̃ is near singular)
    W = W.detach().to(device=C.device, dtype=torch.float64)
    well_conditioned = transform.factorisation == "cholesky" and transform.ridge == 0
    if well_conditioned and (transform.condition is None or transform.condition >= EIGEN_FLOOR):
        return transform.solve_covariance(M @ W.T).T  # (C̃⁻¹ M Wᵀ)ᵀ
    return closest_exact_target(W, C, M)


def closest_exact_target(W: torch.Tensor, C: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``W + W (Mᵀ − C̃) C̃⁺`` (float64): the exact sequential target nearest to ``W`` when ``C̃`` is singular."""
    eigenvalues, Q = torch.linalg.eigh(C)  # ascending
    kept = eigenvalues > EIGEN_FLOOR * eigenvalues[-1]
    Q_r, inverse = Q[:, kept], eigenvalues[kept].reciprocal()  # (n, r), (r,)
    residual = W @ (M.T - C)  # (m, n): how far W is from exact on the range of C̃
    return W + ((residual @ Q_r) * inverse) @ Q_r.T
