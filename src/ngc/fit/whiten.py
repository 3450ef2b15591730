"""Input transforms ``S`` such that the fit is a truncated SVD of ``W S`` (SPEC §4, §6).

- whitening: ``S = L`` with ``C = L Lᵀ`` (Cholesky; a ridge ``λ·mean(diag C)·I`` is added when C is singular)
- diagonal scales: ``S = diag(s)`` (ASVD's activation scales, FWSVD's √Fisher)
- identity: plain SVD
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ngc.errors import NgcError

#: relative ridges tried in turn when C is not positive definite
RIDGES: tuple[float, ...] = (0.0, 1e-8, 1e-6, 1e-4, 1e-2)


class NumericalError(NgcError):
    """Statistics or weights that cannot be fitted (NaN/Inf, or no positive-definite ridge)."""


@dataclass(frozen=True)
class Transform:
    """``S`` as a lower-triangular matrix (whitening), a vector (diagonal) or ``None`` (identity)."""

    factor: torch.Tensor | None
    ridge: float = 0.0  # relative ridge added to C before its Cholesky factor (0 = none needed)

    @property
    def device(self) -> torch.device | None:
        """Where the fit runs: the factor's device (None for the identity: the weights' own)."""
        return self.factor.device if self.factor is not None else None

    def apply(self, W: torch.Tensor) -> torch.Tensor:
        """``W S`` for ``W`` (M, n)."""
        if self.factor is None:
            return W
        return W * self.factor if self.factor.dim() == 1 else W @ self.factor

    def unapply_basis(self, V: torch.Tensor) -> torch.Tensor:
        """``B = S⁻ᵀ V`` so that ``A Bᵀ = U Σ Vᵀ S⁻¹`` (V: (n, k))."""
        if self.factor is None:
            return V
        if self.factor.dim() == 1:
            return V / self.factor.unsqueeze(1)
        return torch.linalg.solve_triangular(self.factor.T, V, upper=True)


IDENTITY = Transform(None)


def whitening(C: torch.Tensor, what: str = "covariance") -> Transform:
    """Cholesky factor of ``C`` (float64), with the smallest ridge from ``RIDGES`` that makes it positive definite."""
    if not torch.isfinite(C).all():
        raise NumericalError(
            f"the calibration statistics of {what} contain NaN or Inf",
            hint="the model produced non-finite activations; check its weights and dtype",
        )
    scale = float(C.diagonal().mean())
    if scale <= 0:
        raise NumericalError(
            f"the calibration statistics of {what} are all zero",
            hint="no calibration token reached this block; use more or longer windows",
        )
    eye = torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    for ridge in RIDGES:
        L, info = torch.linalg.cholesky_ex(C + ridge * scale * eye)
        if int(info) == 0:
            return Transform(L, ridge)
    raise NumericalError(
        f"the calibration covariance of {what} is not positive definite even with ridge {RIDGES[-1]}",
        hint="use more calibration tokens",
    )


def diagonal(scales: torch.Tensor, what: str = "scales") -> Transform:
    """``S = diag(scales)``; zero scales (dead channels) are raised to a small floor so S stays invertible."""
    scales = scales.to(torch.float64)
    if not torch.isfinite(scales).all():
        raise NumericalError(f"the {what} contain NaN or Inf", hint="check the model's weights and dtype")
    top = float(scales.max()) if scales.numel() else 0.0
    if top <= 0:
        raise NumericalError(f"the {what} are all zero", hint="no calibration signal reached this block")
    return Transform(scales.clamp_min(top * 1e-6))
