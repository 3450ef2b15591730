"""Pure float64 sums over calibration tokens; never the activations themselves."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class InputMoments:
    """Streamed statistics of one linear input ``x ∈ R^n``: ``C = Σ_t x_t x_tᵀ`` and ``Σ_t |x_t|``."""

    n: int
    second: torch.Tensor = field(init=False)  # C, (n, n) float64
    abs_sum: torch.Tensor = field(init=False)  # (n,) float64
    tokens: int = 0
    cross: torch.Tensor | None = None  # M = Σ_t x̃_t x_tᵀ (sequential update: x̃ from the compressed prefix)

    def __post_init__(self) -> None:
        self.second = torch.zeros(self.n, self.n, dtype=torch.float64)
        self.abs_sum = torch.zeros(self.n, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of activations of any leading shape ``(..., n)``."""
        flat = x.detach().reshape(-1, self.n).to(device="cpu", dtype=torch.float64)  # (T, n)
        self.second.addmm_(flat.T, flat)
        self.abs_sum.add_(flat.abs().sum(dim=0))
        self.tokens += int(flat.shape[0])

    def add_pair(self, x_compressed: torch.Tensor, x_dense: torch.Tensor) -> None:
        """Accumulate ``x̃`` (what the compressed prefix feeds this input) and the cross moment with dense ``x``."""
        self.add(x_compressed)
        a = x_compressed.detach().reshape(-1, self.n).to(device="cpu", dtype=torch.float64)  # (T, n)
        b = x_dense.detach().reshape(-1, self.n).to(device="cpu", dtype=torch.float64)
        if self.cross is None:
            self.cross = torch.zeros(self.n, self.n, dtype=torch.float64)
        self.cross.addmm_(a.T, b)

    @property
    def abs_mean(self) -> torch.Tensor:
        """Per-channel mean |x_j| (ASVD's activation scale)."""
        return self.abs_sum / max(self.tokens, 1)

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.second).all() and torch.isfinite(self.abs_sum).all())

    @staticmethod
    def pooled(parts: list[InputMoments]) -> InputMoments:
        """Sum of several inputs' statistics (a cross-layer group's pooled ``C_G``)."""
        if len(parts) == 1:
            return parts[0]
        total = InputMoments(parts[0].n)
        for part in parts:
            total.second += part.second
            total.abs_sum += part.abs_sum
            total.tokens += part.tokens
            if part.cross is not None:
                total.cross = part.cross.clone() if total.cross is None else total.cross + part.cross
        return total
