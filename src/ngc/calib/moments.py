"""Streamed sums over calibration tokens, kept where the activations are; never the activations themselves.

The sums are float64 accumulators on the activations' device. Each batch's products ``XᵀX`` are computed in
``precision``: ``float64`` (exact to rounding; the default on the CPU) or ``float32`` (a GPU's fast path: the
batch product in float32, then added to the float64 sum, so only one batch's rounding enters each term; the
error against float64 is measured by ``benchmarks/stats_precision.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

PRECISIONS: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}


def default_precision(device: torch.device | str) -> str:
    """float64 on the CPU (the reference), float32 on an accelerator (float64 GEMMs are slow on most GPUs)."""
    return "float64" if torch.device(device).type == "cpu" else "float32"


@dataclass
class InputMoments:
    """Streamed statistics of one linear input ``x ∈ R^n``: ``C = Σ_t x_t x_tᵀ`` and ``Σ_t |x_t|``."""

    n: int
    device: torch.device | str = "cpu"
    precision: str = "float64"
    second: torch.Tensor = field(init=False)  # C, (n, n) float64
    abs_sum: torch.Tensor = field(init=False)  # (n,) float64
    tokens: int = 0
    cross: torch.Tensor | None = None  # M = Σ_t x̃_t x_tᵀ (sequential update: x̃ from the compressed prefix)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        self.device = torch.device(self.device)
        self.second = torch.zeros(self.n, self.n, dtype=torch.float64, device=self.device)
        self.abs_sum = torch.zeros(self.n, dtype=torch.float64, device=self.device)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as (T, n) in the product precision, on this accumulator's device."""
        return x.detach().reshape(-1, self.n).to(device=self.device, dtype=PRECISIONS[self.precision])

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of activations of any leading shape ``(..., n)``."""
        flat = self._flat(x)  # (T, n)
        self._add_product(self.second, flat, flat)
        self.abs_sum.add_(flat.abs().sum(dim=0, dtype=torch.float64))
        self.tokens += int(flat.shape[0])

    def add_pair(self, x_compressed: torch.Tensor, x_dense: torch.Tensor) -> None:
        """Accumulate ``x̃`` (what the compressed prefix feeds this input) and the cross moment with dense ``x``."""
        self.add(x_compressed)
        a, b = self._flat(x_compressed), self._flat(x_dense)  # (T, n)
        if self.cross is None:
            self.cross = torch.zeros(self.n, self.n, dtype=torch.float64, device=self.device)
        self._add_product(self.cross, a, b)

    @staticmethod
    def _add_product(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        """``total += aᵀ b``: fused in float64, else the low-precision product added to the float64 sum."""
        if a.dtype == torch.float64:
            total.addmm_(a.T, b)
        else:
            total.add_(a.T @ b)

    @property
    def abs_mean(self) -> torch.Tensor:
        """Per-channel mean |x_j| (ASVD's activation scale)."""
        return self.abs_sum / max(self.tokens, 1)

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.second).all() and torch.isfinite(self.abs_sum).all())

    def tensors(self) -> list[torch.Tensor]:
        """The accumulators (what several processes sum)."""
        return [self.second, self.abs_sum] + ([self.cross] if self.cross is not None else [])

    def to(self, device: torch.device | str) -> InputMoments:
        """The same sums on ``device`` (e.g. the host, for statistics kept across layers)."""
        moved = InputMoments(self.n, device, self.precision)
        moved.second, moved.abs_sum = self.second.to(device), self.abs_sum.to(device)
        moved.tokens = self.tokens
        moved.cross = None if self.cross is None else self.cross.to(device)
        return moved

    @staticmethod
    def pooled(parts: list[InputMoments]) -> InputMoments:
        """Sum of several inputs' statistics (a cross-layer group's pooled ``C_G``)."""
        if len(parts) == 1:
            return parts[0]
        total = InputMoments(parts[0].n, parts[0].device, parts[0].precision)
        for part in parts:
            total.second += part.second.to(total.device)
            total.abs_sum += part.abs_sum.to(total.device)
            total.tokens += part.tokens
            if part.cross is not None:
                cross = part.cross.to(total.device)
                total.cross = cross.clone() if total.cross is None else total.cross + cross
        return total
