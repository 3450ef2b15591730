"""Input transforms ``S`` such that the fit is a truncated SVD of ``W S`` (SPEC §4, §6).

- whitening: ``S = L`` with ``C = L Lᵀ`` (Cholesky; a ridge ``λ·mean(diag C)·I`` is added when C is singular).
  When a pivot of L, or the smallest eigenvalue of ``L Lᵀ`` estimated by inverse power steps, is at rounding-noise
  level (``< n·eps·max C_ii``: L is unreliable and ``B = L⁻ᵀ V`` explodes), it falls back to ``S = Q Λ^{1/2}``
  from ``C = Q Λ Qᵀ``, eigenvalues floored at ``EIGEN_FLOOR·λ_max``.
- eigendecomposition on request (``factorisation="eigen"``, SVD-LLM V2's whitening): ``S = Q Λ^{1/2}`` directly,
  no ridge; ``condition`` is then ``λ_min / λ_max`` of C.
- diagonal scales: ``S = diag(s)`` (ASVD's activation scales, FWSVD's √Fisher)
- identity: plain SVD
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ngc.errors import NgcError

#: relative ridges tried in turn when C is not positive definite
RIDGES: tuple[float, ...] = (0.0, 1e-8, 1e-6, 1e-4, 1e-2)
#: the eigen fallback raises eigenvalues below this fraction of the largest to it (so cond(S) <= 1e5)
EIGEN_FLOOR = 1e-10


class NumericalError(NgcError):
    """Statistics or weights that cannot be fitted (NaN/Inf, or no positive-definite ridge)."""


@dataclass(frozen=True)
class Transform:
    """``S`` as a matrix (whitening), a vector (diagonal) or ``None`` (identity).

    ``factorisation`` says how a matrix ``S`` was made: ``"cholesky"`` (lower triangular, ``S Sᵀ = C + ridge``)
    or ``"eigh"`` (``S = Q Λ^{1/2}``, the fallback for a Cholesky factor with near-zero pivots). ``condition``
    is ``min(min L_ii², λ̂_min) / max C_ii`` of the Cholesky attempt (small = ill-conditioned); for ``"eigh"`` that
    of the rejected Cholesky factor (``λ_min / λ_max`` of C when the eigendecomposition was asked for), and ``floored``
    counts the eigenvalues raised to the floor.
    """

    factor: torch.Tensor | None
    ridge: float = 0.0  # relative ridge added to C before its Cholesky factor (0 = none needed)
    factorisation: str = "cholesky"
    condition: float | None = None
    floored: int = 0

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
        if self.factorisation == "eigh":
            return torch.linalg.solve(self.factor.T, V)
        return torch.linalg.solve_triangular(self.factor.T, V, upper=True)

    def gradient(self, G: torch.Tensor) -> torch.Tensor:
        """``G S⁻ᵀ`` for a gradient ``G`` (M, n) w.r.t. W: the gradient w.r.t. ``W S`` (ZS-SVD's whitened ``H``)."""
        if self.factor is None:
            return G
        if self.factor.dim() == 1:
            return G / self.factor
        if self.factorisation == "eigh":
            return torch.linalg.solve(self.factor, G.T).T
        return torch.linalg.solve_triangular(self.factor, G.T, upper=False).T

    def solve_covariance(self, Y: torch.Tensor) -> torch.Tensor:
        """``(S Sᵀ)⁻¹ Y``, i.e. ``C⁻¹ Y`` for a whitening of ``C`` (Y: (n, r))."""
        if self.factor is None:
            return Y
        if self.factor.dim() == 1:
            return Y / self.factor.unsqueeze(1).square()
        if self.factorisation == "eigh":
            return torch.linalg.solve(self.factor.T, torch.linalg.solve(self.factor, Y))
        return torch.cholesky_solve(Y, self.factor)


IDENTITY = Transform(None)


#: inverse-power steps that estimate λ_min(C) through the Cholesky factor
INVERSE_POWER_STEPS = 8


def _pivot_condition(L: torch.Tensor, C: torch.Tensor) -> float:
    """``min(min L_ii², λ̂_min) / max C_ii``: the smallest pivot of the Cholesky factor, or the smallest eigenvalue
    of ``L Lᵀ`` estimated by inverse power steps if that is smaller, relative to C's scale.

    Small pivots are sufficient for a near-singular C but not necessary: a C with ``λ_min / λ_max = 2e-16`` can
    factor with pivots of ``1e-7``. Each step solves ``L Lᵀ x' = x`` (two triangular solves, O(n²)); from above,
    ``1 / ‖x'‖`` for a unit ``x`` approaches ``λ_min`` of ``L Lᵀ`` (an unreliable factor only makes it smaller).
    """
    pivot = float(L.diagonal().square().min())
    x = torch.randn(L.shape[0], 1, dtype=L.dtype, device=L.device, generator=_generator(L.device))
    smallest = float("inf")
    for _ in range(INVERSE_POWER_STEPS):
        x = x / x.norm()
        x = torch.cholesky_solve(x, L)
        size = float(x.norm())
        if not size < float("inf"):  # overflow or NaN: the factor is not usable
            return 0.0
        smallest = min(smallest, 1.0 / size)
    return min(pivot, smallest) / float(C.diagonal().max())


def _generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


def eigen_whitening(C: torch.Tensor, condition: float | None = None) -> Transform:
    """``S = Q Λ^{1/2}`` with ``C = Q Λ Qᵀ``; eigenvalues below ``EIGEN_FLOOR·λ_max`` are raised to it.

    ``condition``: what to report (the rejected Cholesky factor's); None reports ``λ_min / λ_max`` of C.
    """
    eigenvalues, Q = torch.linalg.eigh(C)  # ascending; Q: (n, n)
    if condition is None:
        condition = max(float(eigenvalues[0]), 0.0) / float(eigenvalues[-1])
    floor = EIGEN_FLOOR * eigenvalues[-1]
    floored = int((eigenvalues < floor).sum())
    S = Q * eigenvalues.clamp_min(floor).sqrt()  # (n, n): column i of Q scaled by sqrt(λ_i)
    return Transform(S, 0.0, "eigh", condition, floored)


def _with_ridge(C: torch.Tensor, bump: float) -> torch.Tensor:
    """``C + bump·I`` without building ``I`` (an (n, n) float64 identity is 1 GB at n = 11008); ``C`` itself for 0."""
    if bump == 0:
        return C
    ridged = C.clone()
    ridged.diagonal().add_(bump)
    return ridged


def whitening(C: torch.Tensor, what: str = "covariance", factorisation: str = "cholesky") -> Transform:
    """Cholesky factor of ``C`` (float64), with the smallest ridge from ``RIDGES`` that makes it positive definite.

    Falls back to an eigendecomposition (reported in the Transform) when the factor's smallest pivot is at
    rounding-noise level. ``factorisation="eigen"`` takes the eigendecomposition directly (no ridge, tiny
    eigenvalues floored and counted). Every tensor stays on C's device and dtype.
    """
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
    if factorisation == "eigen":
        return eigen_whitening(C)
    if factorisation != "cholesky":
        raise ValueError(f"factorisation must be cholesky or eigen, got {factorisation!r}")
    n = C.shape[0]
    noise = n * torch.finfo(C.dtype).eps  # a pivot² below noise·max C_ii is rounding error, not signal
    for ridge in RIDGES:
        ridged = _with_ridge(C, ridge * scale)
        L, info = torch.linalg.cholesky_ex(ridged)
        if int(info) == 0:
            condition = _pivot_condition(L, ridged)
            if condition < noise:
                return eigen_whitening(C, condition)
            return Transform(L, ridge, "cholesky", condition)
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
