"""The sequential update's target (SPEC §4): fit on what the compressed prefix feeds a block.

With ``x̃`` the input from the already-compressed layers and ``x`` the dense input, the block should give
``Ŵ x̃ ≈ W x``. Over calibration tokens, ``‖X̃ Ŵᵀ − X Wᵀ‖²`` is minimised without a rank limit by
``Ŵ* = W Mᵀ C̃⁻¹`` (``M = X̃ᵀX``, ``C̃ = X̃ᵀX̃``), and for any Ŵ it equals ``‖(Ŵ − Ŵ*) L̃‖² + const``
(``C̃ = L̃ L̃ᵀ``). So the rank-k fit is the whitened truncation of ``Ŵ*`` under ``C̃``: the closed form of §4
applied to target ``Ŵ*`` and moments ``C̃``.
"""

from __future__ import annotations

import torch

from ngc.calib.moments import InputMoments
from ngc.fit.whiten import whitening


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
    return transform.solve_covariance(M @ W.T).T  # (C̃⁻¹ M Wᵀ)ᵀ
