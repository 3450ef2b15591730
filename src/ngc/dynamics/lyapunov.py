"""Token-time stability (SPEC §8.1): a finite-time Lyapunov exponent per layer.

``trajectory(e)`` maps input embeddings ``e`` (T, d) to hidden states per layer (layers, T, d). The input at
position ``t0`` is perturbed along a unit vector v; ``d_t^ℓ`` is how far layer ℓ's state at t ≥ t0 moves, and
``λ^ℓ`` is the least-squares slope of ``log d_t^ℓ`` over t in (t0, t0 + W]. λ < 0: the perturbation dies out
along the sequence (stable); λ > 0: it grows. Stability is ``S = −λ``.
- finite: ``d_t = ‖traj(e + ε v δ_{t0})_t − traj(e)_t‖``;
- linearised: ``d_t = ‖(J v δ_{t0})_t‖`` by one forward-mode JVP (the ε → 0 limit; the slope is scale-free).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jvp

Trajectory = Callable[[torch.Tensor], torch.Tensor]


def slope(log_distances: torch.Tensor) -> torch.Tensor:
    """Least-squares slope over the last axis (unit spacing), for each leading index."""
    t = torch.arange(log_distances.shape[-1], dtype=log_distances.dtype)
    t = t - t.mean()
    centred = log_distances - log_distances.mean(dim=-1, keepdim=True)
    return (centred * t).sum(dim=-1) / t.pow(2).sum()


def _direction(shape: torch.Size, t0: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    v = torch.zeros(shape, dtype=dtype)
    u = torch.randn(shape[-1], generator=generator, dtype=torch.float64)
    v[t0] = (u / u.norm()).to(dtype)
    return v


def lyapunov(
    trajectory: Trajectory,
    embeds: torch.Tensor,
    t0: int,
    window: int,
    *,
    epsilon: float | None = 1e-3,
    seed: int = 0,
) -> torch.Tensor:
    """λ per layer (layers,). ``epsilon=None`` uses the linearised (JVP) distances."""
    if not 0 <= t0 < t0 + window < embeds.shape[0]:
        raise ValueError(f"need 0 <= t0 < t0 + window < T; got t0={t0}, window={window}, T={embeds.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    v = _direction(embeds.shape, t0, g, embeds.dtype).to(embeds.device)
    if epsilon is None:
        _, moved = jvp(trajectory, (embeds,), (v,))  # one product: forward mode beats building a pullback
    else:
        with torch.no_grad():
            moved = trajectory(embeds + epsilon * v) - trajectory(embeds)
    distances = moved[:, t0 + 1 : t0 + window + 1].detach().to(torch.float64).norm(dim=-1)  # (layers, W)
    return torch.stack([_masked_slope(row, torch.finfo(embeds.dtype).eps ** 0.5) for row in distances])


def _masked_slope(distances: torch.Tensor, relative_floor: float) -> torch.Tensor:
    """Slope of log d_t over the positions where the perturbation is still above round-off (NaN if < 3 remain).

    A layer with local attention forgets the perturbed position beyond its window: those distances are zero (or
    round-off) and carry no exponent.
    """
    keep = distances > relative_floor * float(distances.max().clamp_min(1e-300))
    t = torch.arange(distances.numel(), dtype=torch.float64)[keep]
    if t.numel() < 3:
        return torch.tensor(float("nan"), dtype=torch.float64)
    y = distances[keep].log()
    t_centred = t - t.mean()
    return (t_centred * (y - y.mean())).sum() / t_centred.pow(2).sum()
