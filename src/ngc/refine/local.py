"""Local refinement (SPEC §5): per group, Adam steps on the members' output MSE against the dense blocks.

On calibration tokens ``Σ_t ‖W_s x_t − A_s Bᵀ x_t‖² = tr((W_s − A_s Bᵀ) C_s (W_s − A_s Bᵀ)ᵀ)``, so the steps need
only the streamed second moments ``C_s`` (no activations are kept). The objective is normalised by the dense
outputs' energy ``Σ_s tr(W_s C_s W_sᵀ)``; the best iterate is kept, so the loss never rises.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ngc.fit.alternating import exact_loss


def refine_local(
    weights: Sequence[torch.Tensor],
    A: Sequence[torch.Tensor],
    B: torch.Tensor,
    covariances: Sequence[torch.Tensor],
    steps: int,
    lr: float = 1e-3,
) -> tuple[list[torch.Tensor], torch.Tensor, tuple[float, float]]:
    """Adam on the normalised output MSE; returns ``A``, ``B`` and (loss before, loss after). float64 tensors.

    ``lr`` is relative: each factor tensor's step size is ``lr`` times its mean absolute entry, so A (large
    entries) and B (small entries after whitening) move at comparable relative rates.
    """
    energy = sum(float(((W @ C) * W).sum()) for W, C in zip(weights, covariances, strict=True)) or 1.0
    params = [a.detach().clone().requires_grad_(True) for a in A] + [B.detach().clone().requires_grad_(True)]
    optimizer = torch.optim.Adam([{"params": [p], "lr": lr * (float(p.detach().abs().mean()) or 1.0)} for p in params])

    def loss() -> torch.Tensor:
        *A_t, B_t = params
        total = torch.zeros((), dtype=torch.float64, device=B_t.device)
        for W, A_s, C in zip(weights, A_t, covariances, strict=True):
            E = W - A_s @ B_t.T  # (m_s, n)
            total = total + ((E @ C) * E).sum()
        return total / energy

    with torch.no_grad():
        best_value = before = float(loss())
    best = [p.detach().clone() for p in params]
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()
        with torch.no_grad():
            value = float(loss())
        if value < best_value:
            best_value, best = value, [p.detach().clone() for p in params]
    *A_best, B_best = best
    return A_best, B_best, (before, exact_loss(weights, A_best, B_best, covariances) / energy)
