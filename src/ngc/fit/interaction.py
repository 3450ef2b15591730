"""Non-bilinear interactions (SPEC §1, research option): ``W_ij ≈ μ(a_i, b_j) = φ(a_i)ᵀ φ(b_j)`` with the learned
metric ``φ(u) = tanh(M u + c)``, ``M ∈ R^{k'×k}``, one φ shared by input and output states (or two, ``separate``).

The product is still a factorisation, ``Ŵ = φ(A) φ(B)ᵀ`` of inner rank ``k'``, so inference can run the
factorised path with the materialised ``φ(A)``, ``φ(B)``; what the metric could buy is a better fit for the same
*stored* parameters ``k(m + n) + k'(k + 1)``. It is trained (SPEC §5) on the block's output error from the
calibration moments, ``tr((W − Ŵ) C (W − Ŵ)ᵀ)``, starting from the closed-form states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ngc.fit.closed_form import fit_group
from ngc.fit.whiten import Transform


@dataclass(frozen=True)
class InteractionFit:
    A: torch.Tensor  # (m, k) output states
    B: torch.Tensor  # (n, k) input states
    M: tuple[torch.Tensor, ...]  # one or two (k', k) metrics
    c: tuple[torch.Tensor, ...]  # one or two (k',) offsets
    gain: float  # overall scale of Ŵ (tanh images are bounded)
    loss: float  # normalised output error tr(E C Eᵀ) / tr(W C Wᵀ)

    @property
    def stored_params(self) -> int:
        metric = sum(m.numel() for m in self.M) + sum(c.numel() for c in self.c)
        return self.A.numel() + self.B.numel() + metric + 1

    def weight(self) -> torch.Tensor:
        """``Ŵ = gain · φ(A) φ(B)ᵀ`` (m, n)."""
        phi_out = torch.tanh(self.A @ self.M[0].T + self.c[0])
        phi_in = torch.tanh(self.B @ self.M[-1].T + self.c[-1])
        return self.gain * phi_out @ phi_in.T


def interaction_params(m: int, n: int, k: int, k_out: int, separate: bool) -> int:
    """Stored parameters: states, metric(s), offsets and the gain."""
    return k * (m + n) + (2 if separate else 1) * k_out * (k + 1) + 1


def fit_interaction(
    W: torch.Tensor,
    C: torch.Tensor,
    transform: Transform,
    k: int,
    k_out: int,
    steps: int = 300,
    lr: float = 1e-2,
    separate: bool = False,
    seed: int = 0,
) -> InteractionFit:
    """Adam on the normalised output error; states start from the rank-k closed form, scaled into tanh's range."""
    W = W.detach().to(torch.float64)
    C = C.to(torch.float64)
    start = fit_group([W], k, transform)
    g = torch.Generator().manual_seed(seed)
    scale_a = float(start.A[0].abs().max()) or 1.0
    scale_b = float(start.B.abs().max()) or 1.0
    A = (start.A[0] / scale_a).clone().requires_grad_(True)
    B = (start.B / scale_b).clone().requires_grad_(True)
    count = 2 if separate else 1
    M = [(torch.randn(k_out, k, generator=g, dtype=torch.float64) / k**0.5).requires_grad_(True) for _ in range(count)]
    c = [torch.zeros(k_out, dtype=torch.float64, requires_grad=True) for _ in range(count)]
    gain = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)  # overall scale of Ŵ (one parameter)
    energy = float(((W @ C) * W).sum()) or 1.0
    optimizer = torch.optim.Adam([A, B, *M, *c, gain], lr=lr)

    def loss() -> torch.Tensor:
        phi_out = torch.tanh(A @ M[0].T + c[0])
        phi_in = torch.tanh(B @ M[-1].T + c[-1])
        E = W - gain * (phi_out @ phi_in.T)
        return ((E @ C) * E).sum() / energy

    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()
    with torch.no_grad():
        final = float(loss())
    detached = [x.detach() for x in (A, B, *M, *c, gain)]
    return InteractionFit(
        detached[0],
        detached[1],
        tuple(detached[2 : 2 + count]),
        tuple(detached[2 + count : 2 + 2 * count]),
        float(detached[-1]),
        final,
    )
