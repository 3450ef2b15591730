"""Depth dynamics decomposition (SPEC §8.2) of a map ``F`` at a point, from Jacobian-vector products only.

``J = ∂F/∂h = Sym + Skew``. With probes ``v`` of identity covariance (Rademacher):
- divergence ``tr(J)/D ≈ mean vᵀJv / D`` (negative: contraction on average);
- ``‖Sym‖_F² ≈ mean ‖(Jv + Jᵀv)/2‖²`` and ``‖Skew‖_F² ≈ mean ‖(Jv − Jᵀv)/2‖²`` (Hutchinson);
- driving ratio ``‖Skew‖_F / ‖Sym‖_F``: the part that moves the state without changing its energy to first order;
- the top eigenvalue of Sym (worst-case expansion) by Lanczos on ``v ↦ (Jv + Jᵀv)/2``.
``Jv`` is a forward-mode JVP and ``Jᵀv`` a reverse-mode VJP; J is never formed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import jvp, vjp, vmap

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


def _products(f: Map, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Jv, Jᵀv) at x."""
    _, jv = jvp(f, (x,), (v,))
    _, pullback = vjp(f, x)
    (jtv,) = pullback(v)
    return jv, jtv


def _batched_products(f: Map, x: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(J V, Jᵀ V) for a batch of probes V (P, *x.shape), in one vectorised pass each."""
    _, pullback = vjp(f, x)
    jv = vmap(lambda v: jvp(f, (x,), (v,))[1])(V)
    (jtv,) = vmap(pullback)(V)
    return jv, jtv


def decompose(f: Map, x: torch.Tensor, probes: int = 16, lanczos_steps: int = 20, seed: int = 0) -> Decomposition:
    """Hutchinson estimates of the decomposition of ``∂f/∂x`` at ``x`` (any shape; D = x.numel()).

    The probes run as one batch (``vmap``); a map that cannot be vectorised falls back to one probe at a time.
    """
    g = torch.Generator().manual_seed(seed)
    D = x.numel()
    V = torch.stack([rademacher(x.shape, g, x.dtype) for _ in range(probes)]).to(x.device)  # (P, *x.shape)
    try:
        JV, JTV = (t.detach() for t in _batched_products(f, x, V))
    except (RuntimeError, NotImplementedError):
        pairs = [tuple(t.detach() for t in _products(f, x, v)) for v in V]
        JV, JTV = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
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
        sym_top=sym_top_eigenvalue(f, x, lanczos_steps, seed),
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


def sym_top_eigenvalue(f: Map, x: torch.Tensor, steps: int = 20, seed: int = 0) -> float:
    """Largest eigenvalue of ``(J + Jᵀ)/2`` at x, by Lanczos with full reorthogonalisation (0 steps: NaN)."""
    if steps < 1:
        return math.nan
    g = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(x.shape, generator=g, dtype=torch.float64)
    q = q / q.norm()
    basis: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    for _ in range(min(steps, x.numel())):
        basis.append(q)
        jv, jtv = (t.detach() for t in _products(f, x, q.to(x.dtype)))
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
