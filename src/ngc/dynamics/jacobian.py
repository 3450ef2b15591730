"""Depth dynamics decomposition (SPEC §8.2) of a map ``F`` at a point, from Jacobian-vector products only.

``J = ∂F/∂h = Sym + Skew``. With probes ``v`` of identity covariance (Rademacher):
- divergence ``tr(J)/D ≈ mean vᵀJv / D`` (negative: contraction on average);
- ``‖Sym‖_F² ≈ mean ‖(Jv + Jᵀv)/2‖²`` and ``‖Skew‖_F² ≈ mean ‖(Jv − Jᵀv)/2‖²`` (Hutchinson);
- driving ratio ``‖Skew‖_F / ‖Sym‖_F``: the part that moves the state without changing its energy to first order;
- the top eigenvalue of Sym (worst-case expansion) by Lanczos on ``v ↦ (Jv + Jᵀv)/2``.
J is never formed: :class:`Linearisation` runs ``F`` once, then ``Jᵀv`` is its pullback (one backward pass) and
``Jv`` the pullback of that linear pullback (reverse mode twice). Through decoder layers on a CPU this costs
about a fifth of a forward-mode JVP, and both maps are reused by every probe and every Lanczos step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import vjp, vmap

Map = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Decomposition:
    divergence: float  # tr(J) / D
    divergence_se: float
    sym_norm: float  # ‖Sym‖_F
    skew_norm: float  # ‖Skew‖_F
    driving_ratio: float  # ‖Skew‖_F / ‖Sym‖_F
    driving_ratio_se: float
    sym_top: float  # largest eigenvalue of Sym
    probes: int


def rademacher(shape: torch.Size, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1


class Linearisation:
    """``v ↦ Jv`` and ``v ↦ Jᵀv`` of ``f`` at ``x``, built once and applied many times."""

    def __init__(self, f: Map, x: torch.Tensor) -> None:
        output, self._pullback = vjp(f, x)
        self.input_shape, self.output_shape = x.shape, output.shape
        # the pullback u ↦ Jᵀu is linear; its own pullback is v ↦ Jv (at any point u, here 0)
        _, self._pushforward = vjp(lambda u: self._pullback(u)[0], torch.zeros_like(output))

    def jv(self, v: torch.Tensor) -> torch.Tensor:
        """J v: v shaped like the input, the result like the output."""
        return self._pushforward(v)[0]

    def jtv(self, u: torch.Tensor) -> torch.Tensor:
        """Jᵀ u: u shaped like the output (or with its elements), the result like the input."""
        return self._pullback(u.reshape(self.output_shape))[0]

    def products(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(J V, Jᵀ V) of a square map for a batch of probes V (P, *input shape), both shaped like V: vectorised,
        else one probe at a time."""

        def both(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.jv(v).reshape(v.shape), self.jtv(v)

        try:
            jv, jtv = vmap(both)(V)
        except (RuntimeError, NotImplementedError):
            pairs = [both(v) for v in V]
            jv, jtv = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        return jv.detach(), jtv.detach()


def decompose(f: Map, x: torch.Tensor, probes: int = 16, lanczos_steps: int = 20, seed: int = 0) -> Decomposition:
    """Hutchinson estimates of the decomposition of ``∂f/∂x`` at ``x`` (any shape; D = x.numel()).

    The probes run as one batch (``vmap``); a map that cannot be vectorised falls back to one probe at a time.
    """
    g = torch.Generator().manual_seed(seed)
    D = x.numel()
    V = torch.stack([rademacher(x.shape, g, x.dtype) for _ in range(probes)]).to(x.device)  # (P, *x.shape)
    linear = Linearisation(f, x)
    JV, JTV = linear.products(V)
    dims = tuple(range(1, V.dim()))
    t = (V * JV).sum(dim=dims).to(torch.float64)
    s = ((JV + JTV) / 2).pow(2).sum(dim=dims).to(torch.float64)
    k = ((JV - JTV) / 2).pow(2).sum(dim=dims).to(torch.float64)
    sym_norm, skew_norm = math.sqrt(float(s.mean())), math.sqrt(float(k.mean()))
    ratio = skew_norm / sym_norm if sym_norm > 0 else math.inf
    return Decomposition(
        divergence=float(t.mean()) / D,
        divergence_se=_se(t) / D,
        sym_norm=sym_norm,
        skew_norm=skew_norm,
        driving_ratio=ratio,
        driving_ratio_se=_ratio_se(k, s) if sym_norm > 0 else math.nan,
        sym_top=sym_top_eigenvalue(f, x, lanczos_steps, seed, linear),
        probes=probes,
    )


def _se(values: torch.Tensor) -> float:
    return float(values.std(unbiased=True) / math.sqrt(values.numel())) if values.numel() > 1 else math.nan


def _ratio_se(skew_sq: torch.Tensor, sym_sq: torch.Tensor) -> float:
    """Jackknife standard error of sqrt(mean skew² / mean sym²) over probes."""
    n = skew_sq.numel()
    if n < 2:
        return math.nan
    total_k, total_s = skew_sq.sum(), sym_sq.sum()
    leave_one = torch.sqrt((total_k - skew_sq) / (total_s - sym_sq))
    return float(torch.sqrt((n - 1) / n * (leave_one - leave_one.mean()).pow(2).sum()))


def sym_top_eigenvalue(
    f: Map, x: torch.Tensor, steps: int = 20, seed: int = 0, linear: Linearisation | None = None
) -> float:
    """Largest eigenvalue of ``(J + Jᵀ)/2`` at x, by Lanczos with full reorthogonalisation (0 steps: NaN)."""
    if steps < 1:
        return math.nan
    linear = Linearisation(f, x) if linear is None else linear
    g = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(x.shape, generator=g, dtype=torch.float64)
    q = q / q.norm()
    basis: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    for _ in range(min(steps, x.numel())):
        basis.append(q)
        v = q.to(x.dtype)
        jv, jtv = linear.jv(v).detach().reshape(x.shape), linear.jtv(v).detach()
        w = ((jv + jtv) / 2).to(torch.float64)
        alpha = float((w * q).sum())
        alphas.append(alpha)
        for b in basis:  # full reorthogonalisation: small bases, exact enough
            w = w - (w * b).sum() * b
        beta = float(w.norm())
        if beta < 1e-10:
            break
        betas.append(beta)
        q = w / beta
    k = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    for i in range(k - 1):
        T[i, i + 1] = T[i + 1, i] = betas[i]
    return float(torch.linalg.eigvalsh(T)[-1])
