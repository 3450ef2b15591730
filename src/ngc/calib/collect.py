"""Statistics kept for reuse: every compressed input's moments from one calibration pass (SPEC §4).

They are collected by :func:`ngc.api.collect_statistics` through the layer-sequential pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ngc.calib.moments import InputMoments


@dataclass
class CalibrationStats:
    """Every compressed input's moments kept at once, to fit several configurations from one pass."""

    moments: dict[str, InputMoments] = field(default_factory=dict)
    fisher: dict[str, torch.Tensor] | None = None  # member id -> per-input-channel Fisher information
    tokens: torch.Tensor | None = None  # the (N, L) windows, for steps that need activations (distillation)
    n_windows: int = 0
    window_len: int = 0
    source: str = ""
    split: str | None = None
    seed: int = 0

    def layers(self) -> Iterator[tuple[int, dict[str, InputMoments]]]:
        by_layer: dict[int, dict[str, InputMoments]] = {}
        for key, value in self.moments.items():
            by_layer.setdefault(int(key[1:].split(":")[0]), {})[key] = value
        yield from sorted(by_layer.items())
