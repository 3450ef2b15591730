"""Per-layer dynamics of a model over several sequences (SPEC §8), with standard errors over sequences."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ngc.arch import decoder_layers
from ngc.calib.layers import record_layer_calls, run_layer
from ngc.dynamics.force import layer_forces
from ngc.dynamics.jacobian import decompose
from ngc.dynamics.lyapunov import lyapunov
from ngc.dynamics.trajectory import eager_attention, layer_states
from ngc.progress import progress


@dataclass(frozen=True)
class LayerDynamics:
    layer: int
    lyapunov: float  # token-time exponent λ (stability S = −λ)
    lyapunov_se: float
    divergence: float  # tr(J)/D of the layer update
    sym_top: float  # largest eigenvalue of Sym(J)
    driving_ratio: float  # ‖Skew‖_F / ‖Sym‖_F
    driving_ratio_se: float
    force_ratio: float | None = None
    departure: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _mean_se(values: list[float]) -> tuple[float, float]:
    finite = torch.tensor([v for v in values if math.isfinite(v)], dtype=torch.float64)
    if finite.numel() == 0:
        return math.nan, math.nan
    se = float(finite.std(unbiased=True) / math.sqrt(finite.numel())) if finite.numel() > 1 else math.nan
    return float(finite.mean()), se


def sequence_dynamics(
    model: nn.Module, tokens: torch.Tensor, t0: int, window: int, probes: int, lanczos_steps: int, seed: int
) -> tuple[torch.Tensor, list]:
    """λ per layer (linearised) and the depth decomposition of every layer update, for one sequence (T,)."""
    embeds = model.get_input_embeddings()(tokens).detach()
    lyap = lyapunov(lambda e: layer_states(model, e), embeds, t0, window, epsilon=None, seed=seed)
    calls = record_layer_calls(model, tokens.unsqueeze(0))
    hidden = calls.hidden[0]
    decompositions = []
    for index, layer in enumerate(decoder_layers(model)):
        kwargs = calls.kwargs[index][0]
        update = lambda h, layer=layer, kwargs=kwargs: run_layer(layer, h, kwargs) - h  # noqa: E731
        decompositions.append(decompose(update, hidden.detach(), probes, lanczos_steps, seed + index))
        with torch.no_grad():
            hidden = run_layer(layer, hidden, kwargs)
    return lyap, decompositions


@dataclass(frozen=True)
class SequenceDynamics:
    """Every per-layer figure of one sequence (lists indexed by layer)."""

    tokens: int
    lyapunov: list[float]
    divergence: list[float]
    sym_top: list[float]
    driving_ratio: list[float]
    force_ratio: list[float] | None = None
    departure: list[float] | None = None

    @property
    def stability(self) -> float:
        """S = −λ averaged over the layers with a finite exponent (one number per sequence, SPEC §8.4)."""
        return -_finite_mean(self.lyapunov)

    @property
    def driving(self) -> float:
        """The driving ratio averaged over layers."""
        return _finite_mean(self.driving_ratio)


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def default_window(T: int, t0: int | None, window: int | None) -> tuple[int, int]:
    """t0 = T // 4 and a window of the rest (at most 64 tokens) unless given."""
    t0 = T // 4 if t0 is None else t0
    return t0, (min(T - t0 - 1, 64) if window is None else window)


def dynamics_per_sequence(
    model: nn.Module,
    sequences: torch.Tensor | Sequence[torch.Tensor],
    reference: nn.Module | None = None,
    *,
    t0: int | None = None,
    window: int | None = None,
    probes: int = 4,
    lanczos_steps: int = 10,
    seed: int = 0,
) -> list[SequenceDynamics]:
    """Per-layer figures of each sequence: rows of an (N, T) tensor, or 1-D sequences of different lengths."""
    results = []
    # both models in plain attention: layer_forces replays the reference's layer calls (and their masks) through
    # the model's layers, and an sdpa call carries no causal mask that eager attention would apply
    with eager_attention(model), eager_attention(reference) if reference is not None else nullcontext():
        for n, tokens in enumerate(progress(sequences, desc="dynamics (sequences)", unit="seq")):
            start, span = default_window(int(tokens.shape[0]), t0, window)
            lyap, decompositions = sequence_dynamics(model, tokens, start, span, probes, lanczos_steps, seed + n)
            forces = layer_forces(model, reference, tokens) if reference is not None else None
            results.append(
                SequenceDynamics(
                    tokens=int(tokens.shape[0]),
                    lyapunov=[float(v) for v in lyap],
                    divergence=[d.divergence for d in decompositions],
                    sym_top=[d.sym_top for d in decompositions],
                    driving_ratio=[d.driving_ratio for d in decompositions],
                    force_ratio=None if forces is None else [f.force_ratio for f in forces],
                    departure=None if forces is None else [f.departure for f in forces],
                )
            )
    return results


def summarise(per_sequence: Sequence[SequenceDynamics]) -> list[LayerDynamics]:
    """Per-layer means over sequences, with standard errors over sequences."""
    layers = []
    for index in range(len(per_sequence[0].lyapunov)):
        column = {
            key: [getattr(s, key)[index] for s in per_sequence if getattr(s, key) is not None]
            for key in ("lyapunov", "divergence", "sym_top", "driving_ratio", "force_ratio", "departure")
        }
        lyap_mean, lyap_se = _mean_se(column["lyapunov"])
        ratio_mean, ratio_se = _mean_se(column["driving_ratio"])
        layers.append(
            LayerDynamics(
                layer=index,
                lyapunov=lyap_mean,
                lyapunov_se=lyap_se,
                divergence=_mean_se(column["divergence"])[0],
                sym_top=_mean_se(column["sym_top"])[0],
                driving_ratio=ratio_mean,
                driving_ratio_se=ratio_se,
                force_ratio=_mean_se(column["force_ratio"])[0] if column["force_ratio"] else None,
                departure=_mean_se(column["departure"])[0] if column["departure"] else None,
            )
        )
    return layers


def measure_dynamics(
    model: nn.Module,
    sequences: torch.Tensor | Sequence[torch.Tensor],
    reference: nn.Module | None = None,
    **options: Any,
) -> list[LayerDynamics]:
    """Per-layer figures averaged over ``sequences``; ``options`` as :func:`dynamics_per_sequence` takes them
    (``t0`` defaults to T // 4, ``window`` to the rest, ``probes``, ``lanczos_steps``, ``seed``)."""
    return summarise(dynamics_per_sequence(model, sequences, reference, **options))
